"""Tree mode ``secure-hist``: boosting on securely summed histograms (`hist_rounds`).

A training round runs the session's setup (first round) and one secure aggregation per tree
level; the service moves on by itself whenever nobody is awaited and the round closes itself
with the model once its last tree is done. Silos learn their next step from a `HistTask` and
fetch its binary messages from the inbox (`inbox`). Evaluation rounds are the tree engine's.
"""

from __future__ import annotations

import json

from aggregation.service import hist_mailbox, hist_rounds
from aggregation.service.engines.base import AfterCommit, Answer, RoundContext
from aggregation.service.engines.common import (
    answered,
    awaited_default,
    close_with_answers,
    refuse_step,
    round_fields,
)
from aggregation.service.engines.trees import evaluate_task
from aggregation.service.exceptions import Conflict
from aggregation.service.hist_state import HistState, hist_row, load, pending_level, save
from aggregation.service.tables import Contribution, HistRun
from schemas.secagg.session_messages import SETUP_COUNTER
from schemas.tasks import HistTask, HistTaskInfo, Task
from schemas.wire import HistStage

STEP_PREFIX = "hist/"  # Answer.step of the secure-hist routes: hist/<stage>


class SecureHistEngine:
    """Secure histogram aggregation, level by level (see the module docstring)."""

    def start(self, ctx: RoundContext, deadline_s: float) -> AfterCommit | None:
        if ctx.rnd.kind == "train":
            hist_rounds.open_round(ctx.s, ctx.run, ctx.rnd, ctx.spec, ctx.hub.recorder)
        return None

    def task_for(self, ctx: RoundContext, silo: str) -> Task | None:
        rnd = ctx.rnd
        if rnd.kind != "train":
            return None if answered(ctx, silo) else evaluate_task(ctx)
        row = hist_row(ctx.s, rnd.run_id)
        if row is None:
            return None
        info = step_for(load(row, light=True), row, silo)  # polled often: a light load
        if info is None:
            return None
        return HistTask(**round_fields(ctx), hist=info)

    def receive(self, ctx: RoundContext, answer: Answer) -> dict[str, object]:
        """One session message for the open aggregation (`answer.step`: ``hist/<stage>``;
        ``params["claim"]``: the level a masked vector answers). Answers where the run stands."""
        s, run, rnd = ctx.s, ctx.run, ctx.rnd
        if not answer.step.startswith(STEP_PREFIX):
            raise refuse_step(ctx, answer, "secure-hist", "send secure-hist session messages")
        # the caller holds the round's lock; then the run's state, the order closing takes
        row = hist_row(s, run.id, for_update=True)
        s.refresh(rnd)  # SQLite locks at the state row's write: re-read the round after it
        if row is None or rnd.kind != "train":
            raise Conflict(f"run {run.id} has no secure-hist aggregation open")
        claim = answer.params.get("claim", hist_mailbox.LevelClaim())
        assert isinstance(claim, hist_mailbox.LevelClaim)
        state = load(row)
        created = hist_mailbox.receive(
            s,
            run,
            rnd,
            state,
            answer.step.removeprefix(STEP_PREFIX),
            answer.silo,
            answer.body,
            claim,
        )
        if created:
            hist_rounds.advance(s, run, rnd, state, ctx.hub.recorder, force=False)
            save(row, state)
        agg = state.server.current
        return {
            "duplicate": not created,
            "phase": state.phase,
            "counter": state.server.counter,
            "stage": agg.stage if agg is not None and state.phase == "aggregate" else None,
            "trees": len(state.trees),
            "round_status": rnd.status,
        }

    def advance(self, ctx: RoundContext, *, force: bool) -> None:
        if ctx.rnd.kind != "train":
            return
        row = hist_row(ctx.s, ctx.run.id, for_update=True)
        ctx.s.refresh(ctx.rnd)
        if row is None or ctx.rnd.status != "open":
            return
        state = load(row)
        hist_rounds.advance(ctx.s, ctx.run, ctx.rnd, state, ctx.hub.recorder, force=force)
        save(row, state)

    def close(self, ctx: RoundContext) -> None:
        if ctx.rnd.kind == "train":
            # the round closes itself; at the deadline silent silos drop out
            hist_rounds.close(ctx.s, ctx.run, ctx.rnd, ctx.hub.recorder)
        else:
            close_with_answers(ctx, _no_training)

    def awaited(self, ctx: RoundContext) -> set[str]:
        if ctx.rnd.kind != "train":
            return awaited_default(ctx)
        row = hist_row(ctx.s, ctx.run.id)
        if row is None:
            return set()
        return hist_rounds.awaited(ctx.s, ctx.run, ctx.rnd, load(row, light=True))

    def stage(self, ctx: RoundContext) -> str | None:
        """The session's stage: ``advertise`` (setup), or the open aggregation's stage."""
        row = hist_row(ctx.s, ctx.run.id) if ctx.rnd.kind == "train" else None
        if row is None:
            return None
        state = load(row, light=True)
        agg = state.server.current
        if state.phase == "aggregate" and agg is not None:
            return str(agg.stage)
        return state.phase


def _no_training(ctx: RoundContext, _updates: list[Contribution]) -> None:
    raise AssertionError("secure-hist training rounds close themselves")


def inbox(ctx: RoundContext, silo: str, counter: int) -> list[bytes] | None:
    """The binary messages of `silo`'s step at aggregation `counter` (None: nothing waits)."""
    row = hist_row(ctx.s, ctx.run.id)
    if row is None:
        return None
    return hist_mailbox.inbox(load(row, light=True), silo, counter)


def step_for(state: HistState, row: HistRun, silo: str) -> HistTaskInfo | None:
    """What `silo` must send next in this run, or None (nothing, or it left the session)."""
    srv = state.server
    cfg = srv.config
    if state.phase == "advertise":
        if silo not in cfg.silos or silo in srv.adverts:
            return None
        return HistTaskInfo(
            stage=HistStage.advertise,
            counter=SETUP_COUNTER,
            config=state.config.to_dict(),
            roster=list(cfg.silos),
            roster_keys={k: v.hex() for k, v in srv.roster_keys.items()},
            threshold=cfg.threshold,
            consistency_check=cfg.consistency_check,
        )
    agg = srv.current
    if state.phase != "aggregate" or agg is None or silo not in srv.active:
        return None
    if agg.stage == "masked" and silo in agg.active and silo not in agg.masked:
        info = HistTaskInfo(stage=HistStage.masked, counter=agg.counter)
        level = pending_level(state)
        if state.purpose == "rows":
            info.count_rows = True
        elif state.purpose == "setup":
            info.rows = state.rows or None
        elif level is not None:
            info.level = level.to_json().decode()
            if level.depth == 0 and level.tree > 0:
                info.previous = json.loads(row.trees_json)["done"][level.tree - 1]
        return info
    if agg.stage == "consistency" and silo in agg.survivors and silo not in agg.consistency:
        return HistTaskInfo(
            stage=HistStage.consistency, counter=agg.counter, survivors=list(agg.survivors)
        )
    if agg.stage == "unmask" and silo in agg.survivors and silo not in agg.responses:
        if hist_mailbox.inbox(state, silo, agg.counter) is None:
            return None
        return HistTaskInfo(stage=HistStage.unmask, counter=agg.counter)
    return None
