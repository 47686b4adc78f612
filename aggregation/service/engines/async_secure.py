"""Secure aggregation in asynchronous (FedBuff) buffers: a cohort of K ready silos runs the
secure-aggregation stages of `engines.secure` among themselves.

- a silo trains on the round it was asked for, r (base version v_r), keeps its update, and
  announces that it is ready (``secagg/ready`` to round r, with its example count): the
  announcement goes into the buffer open now, R, as a ``ready`` row of R's mailbox;
- at the K-th ready silo the service fixes R's cohort, in the same transaction: the roster is
  those K silos, each with its staleness t = v_R - v_r and weight s(t) (`async_buffer`); a
  ready silo staler than ``max_staleness`` is left out, listed under ``dropped_stale``, and
  trains anew;
- the cohort runs advertise -> share -> masked -> (consistency) -> unmask exactly as a
  synchronous secure round (`secure_rounds`), each silo masking w_k s(t_k) d_k with
  w_k = n_k / N (`SecAggBufferedTask`). The service unmasks only the sum, divides it by the
  survivors' sum of w_k (sum_k n_k s(t_k) d_k / sum_k n_k, the plain buffers' formula) and
  the strategy makes the next model. A silo that drops after sharing is recovered from the
  others' shares; too few survivors fail the buffer, as they fail a synchronous round;
- a silo that becomes ready while R's cohort runs waits in R's mailbox and is carried into
  the next buffer when the coordinator opens it. At the deadline a buffer with fewer than K
  ready silos runs with those it has, if they are enough for secure aggregation;
- once every active silo is ready (or answered otherwise: sat out, declined), as when silos
  left the run and fewer than K remain, waiting longer cannot bring another: the cohort is
  fixed then with those ready, if they are enough for secure aggregation (`least_cohort`), as a
  plain buffer closes once every silo answered.
"""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import select

from aggregation.service import secure_rounds
from aggregation.service.contributions import check_n_examples
from aggregation.service.engines.async_buffer import staleness_weight
from aggregation.service.engines.base import AfterCommit, Answer, RoundContext
from aggregation.service.engines.common import answered, fail_round, refuse_step, round_fields
from aggregation.service.engines.secure import STEP_PREFIX, SecureEngine
from aggregation.service.exceptions import Conflict, InvalidPayload
from aggregation.service.rounds import active_silos, contributions, get_round
from aggregation.service.tables import Contribution, Round, SecAggMessage
from schemas.specs import AsyncSpec
from schemas.tasks import SecAggBufferedTask, SecAggMaskedTask, Task, TrainTask

READY = "ready"  # mailbox stage of a ready announcement (not a protocol stage)
READY_STEP = STEP_PREFIX + READY


class AsyncSecureEngine(SecureEngine):
    """Asynchronous buffers whose cohorts aggregate securely (see the module docstring)."""

    def start(self, ctx: RoundContext, deadline_s: float) -> AfterCommit | None:
        secure_rounds.consistency_default(ctx.spec, ctx.hub.settings)  # refuse a bad run now
        if ctx.rnd.secagg_stage is None:
            _carry_over(ctx)
            _fix_if_due(ctx)
        return None

    def task_for(self, ctx: RoundContext, silo: str) -> Task | None:
        rnd = ctx.rnd
        if rnd.secagg_stage is not None and silo in secure_rounds.roster(rnd):
            task = super().task_for(ctx, silo)
            if not isinstance(task, SecAggMaskedTask):
                return task
            info = cohort(rnd)[silo]
            weight = (task.secagg.weight or 0.0) * float(info["weight"])
            return SecAggBufferedTask(
                **round_fields(ctx),
                secagg=task.secagg.model_copy(update={"weight": weight}),
                base_round=int(info["base_round"]),
                staleness=int(info["staleness"]),
            )
        if _ready_row(ctx, rnd, silo) is not None or answered(ctx, silo):
            return None  # waiting for a cohort, or done with this buffer
        return TrainTask(**round_fields(ctx))

    def base_round(self, ctx: RoundContext, silo: str) -> int | None:
        info = cohort(ctx.rnd).get(silo)
        return int(info["base_round"]) if info is not None else None

    def receive(self, ctx: RoundContext, answer: Answer) -> dict[str, object]:
        if answer.step == READY_STEP:
            return _receive_ready(ctx, answer)
        if not answer.step.startswith(STEP_PREFIX):
            raise refuse_step(
                ctx, answer, "secure asynchronous", "announce ready to .../secagg/ready"
            )
        if ctx.rnd.secagg_stage is None:
            raise Conflict(
                f"buffer {ctx.rnd.number} of run {ctx.run.id} has no cohort yet: silo "
                f"{answer.silo!r} announces ready first (.../secagg/ready)"
            )
        return super().receive(ctx, answer)

    def advance(self, ctx: RoundContext, *, force: bool) -> None:
        """Before the cohort: fix it if every active silo is now ready (one left the run, sat
        out or declined: `closing.unblock`); then the protocol's stages."""
        if ctx.rnd.secagg_stage is None:
            _fix_if_due(ctx)
            return
        super().advance(ctx, force=force)

    def close(self, ctx: RoundContext) -> None:
        """At the deadline: run the buffer with the ready silos it has, if they are enough
        for secure aggregation; once its cohort runs, whoever is silent drops out."""
        rnd = ctx.rnd
        if rnd.secagg_stage is not None:
            super().close(ctx)
            return
        need = least_cohort(ctx)
        if not fix_cohort(ctx, need=need):
            ready = sorted(r.silo for r in _ready_rows(ctx, rnd))
            fail_round(
                ctx,
                f"buffer {rnd.number}: {len(ready)} silos ready by the deadline "
                f"({', '.join(ready) or 'none'}); a secure buffer needs at least {need}",
            )

    def awaited(self, ctx: RoundContext) -> set[str]:
        """Before the cohort: the silos still training; then the cohort's current stage."""
        if ctx.rnd.secagg_stage is not None:
            return super().awaited(ctx)
        return _training(ctx)

    def entry_extra(self, ctx: RoundContext, updates: list[Contribution]) -> dict[str, object]:
        """What the ``aggregate`` entry says of a buffer: each contributor's base round,
        staleness and weight, the buffer's settings and who was too stale."""
        spec, doc = _spec(ctx), secure_rounds.round_doc(ctx.rnd)
        info = doc["buffered"]
        return {
            "contributors": [
                {"silo": c.silo, "digest": c.digest, "n_examples": c.n_examples, **info[c.silo]}
                for c in updates
            ],
            "asynchronous": {
                "buffer_size": spec.buffer_size,
                "max_staleness": spec.max_staleness,
                "staleness_weight": spec.staleness_weight,
            },
            "cohort": list(secure_rounds.roster(ctx.rnd)),
            "dropped_stale": doc.get("dropped_stale", []),
        }

    def scored(self, ctx: RoundContext, updates: list[Contribution]) -> list[Contribution]:
        """Metrics only from updates with staleness 0 (they scored the buffer's input model)."""
        info = cohort(ctx.rnd)
        return [c for c in updates if info[c.silo]["staleness"] == 0]


def least_cohort(ctx: RoundContext) -> int:
    """The smallest cohort a buffer may run with short of K: 2 (masks cancel only between
    silos), min_silos, and the secure-aggregation threshold (never lowered: the spec keeps
    K >= it, and a short cohort must still meet it)."""
    spec = ctx.spec
    return max(2, spec.min_silos, spec.secure_aggregation.threshold or 2)


def _fix_if_due(ctx: RoundContext) -> None:
    """Fix the cohort at K ready silos, or once nobody active is still training (fewer than
    K silos remain: waiting for the deadline could bring no one) with those ready, or fail
    the buffer now if they are too few for secure aggregation."""
    if ctx.rnd.status != "open" or ctx.rnd.secagg_stage is not None:
        return
    if fix_cohort(ctx, need=_spec(ctx).buffer_size) or _training(ctx):
        return
    need = least_cohort(ctx)
    if not fix_cohort(ctx, need=need):
        ready = sorted(r.silo for r in _ready_rows(ctx, ctx.rnd))
        fail_round(
            ctx,
            f"buffer {ctx.rnd.number}: every active silo is ready or has answered, and the "
            f"{len(ready)} ready ({', '.join(ready) or 'none'}) are too few: a secure buffer "
            f"needs at least {need} (2, min_silos and secure_aggregation.threshold)",
        )
        ctx.hub.recorder.checkpoint_round(ctx.s, ctx.rnd)  # as a deadline's failure is


def _training(ctx: RoundContext) -> set[str]:
    """Before the cohort: the active silos neither ready nor done with the buffer."""
    rnd = ctx.rnd
    done = {c.silo for c in contributions(ctx.s, rnd.run_id, rnd.number)}
    ready = {r.silo for r in _ready_rows(ctx, rnd)}
    return set(active_silos(ctx.s, rnd.run_id)) - done - ready


def cohort(rnd: Round) -> dict[str, dict[str, Any]]:
    """Each cohort member's base round, base version, staleness and weight."""
    return dict(secure_rounds.round_doc(rnd).get("buffered", {}))


def fix_cohort(ctx: RoundContext, *, need: int) -> bool:
    """Fix the buffer's cohort when at least `need` ready silos are fresh enough: up to K
    of them, in the order they became ready; open the advertise stage. Returns whether it did.
    Ready silos beyond ``max_staleness`` are dropped (their rows deleted: they train anew)."""
    rnd, spec = ctx.rnd, _spec(ctx)
    if rnd.status != "open" or rnd.secagg_stage is not None:
        return False
    usable: list[tuple[SecAggMessage, dict[str, object]]] = []
    stale: list[tuple[SecAggMessage, int]] = []
    for row in _ready_rows(ctx, rnd):
        base_round = int(json.loads(row.payload)["base_round"])
        base_version = get_round(ctx.s, rnd.run_id, base_round).input_model_version
        t = rnd.input_model_version - base_version
        if spec.max_staleness is not None and t > spec.max_staleness:
            stale.append((row, t))
            continue
        weight = staleness_weight(spec, t)
        info = {"base_round": base_round, "base_version": base_version, "staleness": t}
        usable.append((row, {**info, "weight": weight}))
    if len(usable) < need:
        return False
    members = usable[: spec.buffer_size]
    check = secure_rounds.consistency_default(ctx.spec, ctx.hub.settings)
    secure_rounds.start(ctx.s, rnd, rnd.run_id, consistency_check=check)
    doc = secure_rounds.round_doc(rnd)
    doc["silos"] = sorted(row.silo for row, _ in members)
    doc["buffered"] = {row.silo: info for row, info in members}
    doc["dropped_stale"] = [{"silo": row.silo, "staleness": t} for row, t in stale]
    rnd.roster_json = json.dumps(doc)
    for row, _ in stale:
        ctx.s.delete(row)
    ctx.s.flush()
    return True


def _spec(ctx: RoundContext) -> AsyncSpec:
    spec = ctx.spec.asynchronous
    assert spec is not None  # mode_of routes only asynchronous runs here
    return spec


def _ready_rows(ctx: RoundContext, rnd: Round) -> list[SecAggMessage]:
    """The buffer's ready silos not in its cohort (all of them before it is fixed)."""
    rows = ctx.s.scalars(
        select(SecAggMessage)
        .where(
            SecAggMessage.run_id == rnd.run_id,
            SecAggMessage.round == rnd.number,
            SecAggMessage.stage == READY,
        )
        .order_by(SecAggMessage.id)
    )
    members = set(secure_rounds.roster(rnd)) if rnd.roster_json else set()
    return [r for r in rows if r.silo not in members]


def _ready_row(ctx: RoundContext, rnd: Round, silo: str) -> SecAggMessage | None:
    return ctx.s.scalar(
        select(SecAggMessage).where(
            SecAggMessage.run_id == rnd.run_id,
            SecAggMessage.round == rnd.number,
            SecAggMessage.stage == READY,
            SecAggMessage.silo == silo,
        )
    )


def _carry_over(ctx: RoundContext) -> None:
    """Copy the previous buffer's waiting ready silos (not its cohort) into this one: they
    trained and wait for a cohort. A retried open copies nothing twice."""
    rnd = ctx.rnd
    if rnd.number < 2:
        return
    previous = get_round(ctx.s, rnd.run_id, rnd.number - 1)
    if previous.kind != "train":
        return
    for row in _ready_rows(ctx, previous):
        if _ready_row(ctx, rnd, row.silo) is None:
            ctx.s.add(_row(rnd, row.silo, row.payload, row.n_examples))
    ctx.s.flush()


def _row(rnd: Round, silo: str, payload: bytes, n_examples: int | None) -> SecAggMessage:
    return SecAggMessage(
        run_id=rnd.run_id,
        round=rnd.number,
        stage=READY,
        silo=silo,
        payload=payload,
        n_examples=n_examples,
    )


def _receive_ready(ctx: RoundContext, answer: Answer) -> dict[str, object]:
    """A silo trained for round `ctx.rnd` (its base) and waits for a cohort: file it into
    the run's current buffer, and fix that buffer's cohort if it is the K-th."""
    s, run, asked, silo = ctx.s, ctx.run, ctx.rnd, answer.silo
    n_examples = answer.params.get("n_examples")
    if not isinstance(n_examples, int):
        raise InvalidPayload(f"silo {silo!r}: ready needs ?n_examples=N (the update's weight)")
    if asked.kind != "train":
        raise Conflict(f"round {asked.number} of run {run.id} is a {asked.kind} round")
    check_n_examples(s, run.id, asked.number, silo, n_examples, "ready announcement")
    buffer = get_round(s, run.id, run.current_round, for_update=True)  # run locked: stable
    if buffer.kind != "train":
        raise Conflict(
            f"the run's current round {buffer.number} is a {buffer.kind} round: silo "
            f"{silo!r}'s update for round {asked.number} has no buffer to join"
        )
    payload = json.dumps({"base_round": asked.number}).encode()
    existing = _ready_row(ctx, buffer, silo)
    members = secure_rounds.roster(buffer) if buffer.roster_json else ()
    if existing is not None and existing.payload == payload:  # a retry after a lost answer
        if existing.n_examples != n_examples:  # repeats its announcement, or it is no retry
            raise Conflict(
                f"silo {silo!r} announced round {asked.number}'s update with n_examples="
                f"{existing.n_examples} in buffer {buffer.number}; this announcement says "
                f"{n_examples} (a newer update announces a newer round)"
            )
        return {"buffer": buffer.number, "duplicate": True, "cohort": silo in members}
    if silo in members:
        raise Conflict(
            f"silo {silo!r} is in buffer {buffer.number}'s cohort; it announces its next "
            "update after that buffer"
        )
    if existing is not None:  # a newer update supersedes the one that waited
        s.delete(existing)
        s.flush()
    s.add(_row(buffer, silo, payload, n_examples))
    s.flush()
    if buffer.status == "open":
        _fix_if_due(RoundContext(s, run, buffer, ctx.spec, ctx.hub))
    return {
        "buffer": buffer.number,
        "duplicate": False,
        "cohort": silo in (secure_rounds.roster(buffer) if buffer.roster_json else ()),
    }
