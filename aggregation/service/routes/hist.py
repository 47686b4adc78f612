"""Silo endpoints of secure-histogram runs (tree mode ``secure-hist``).

POST a session message (advert, masked vector, survivor signature, unmask answer) for the
run's open aggregation; GET the federation's cut points and base score once the setup
aggregation is done. Tasks come through the ordinary task poll (`hist_mailbox.hist_task`).
The service sees masked vectors and their sums only.
"""

from __future__ import annotations

import json
from typing import Annotated

from fastapi import APIRouter, Query
from starlette.concurrency import run_in_threadpool

from aggregation.service import hist_mailbox, hist_rounds
from aggregation.service.db import transaction
from aggregation.service.deps import FactoryDep, RecorderDep, SiloDep
from aggregation.service.exceptions import Conflict, Forbidden, InvalidPayload
from aggregation.service.hist_state import load, save
from aggregation.service.rounds import get_round
from aggregation.service.routes.silo import record_rejection
from aggregation.service.runs import get_run, spec_of
from aggregation.service.tables import RunSilo

router = APIRouter(prefix="/v1/silo/runs/{run_id}/hist", tags=["secure-hist"])


def _nodes(raw: str) -> tuple[int, ...]:
    try:
        return tuple(int(n) for n in raw.split(",") if n != "")
    except ValueError:
        raise InvalidPayload(f"nodes must be comma-separated node ids, got {raw!r}") from None


@router.post("/{stage}")
async def post_message(
    run_id: str,
    stage: str,
    silo: SiloDep,
    factory: FactoryDep,
    recorder: RecorderDep,
    tree: Annotated[int | None, Query(ge=0)] = None,
    depth: Annotated[int | None, Query(ge=0)] = None,
    nodes: str = "",
) -> dict[str, object]:
    """One session message; a level's masked vector names the level it answers
    (``?tree=&depth=&nodes=1,2``). Answers where the run stands."""
    claim = hist_mailbox.LevelClaim(tree, depth, _nodes(nodes))
    number = 0

    def store() -> dict[str, object]:
        nonlocal number
        with transaction(factory) as s:
            run = get_run(s, run_id)
            spec = spec_of(run)
            if not hist_rounds.is_hist(spec):
                raise Conflict(f"run {run_id} is not a secure-hist run")
            if s.get(RunSilo, (run_id, silo.name)) is None:
                raise Forbidden(f"silo {silo.name!r} is not a participant of run {run_id}")
            number = run.current_round
            # locks in the order closing.close_round takes them: round, then the run's state
            rnd = get_round(s, run_id, number, for_update=True)
            row = hist_rounds.hist_row(s, run_id, for_update=True)
            s.refresh(rnd)  # SQLite locks at the state row's write: re-read the round after it
            if row is None or rnd.kind != "train":
                raise Conflict(f"run {run_id} has no secure-hist aggregation open")
            state = load(row)
            created = hist_mailbox.receive(s, run, rnd, state, stage, silo.name, silo.body, claim)
            if created:
                hist_rounds.advance(s, run, rnd, state, recorder, force=False)
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

    try:
        return await run_in_threadpool(store)
    except InvalidPayload as exc:
        await run_in_threadpool(record_rejection, factory, recorder, run_id, number, silo.name, exc)
        raise


@router.get("/cuts")
def cuts(run_id: str, silo: SiloDep, factory: FactoryDep) -> dict[str, object]:
    """The federation's cut points (JSON lists, float32 values) and base score."""
    with transaction(factory) as s:
        if s.get(RunSilo, (run_id, silo.name)) is None:
            raise Forbidden(f"silo {silo.name!r} is not a participant of run {run_id}")
        row = hist_rounds.hist_row(s, run_id)
        if row is None or row.cuts_json is None:
            raise Conflict(f"run {run_id}: the setup aggregation has not finished yet")
        base_score = json.loads(row.state_json)["base_score"]
        return {"cuts": row.cuts_json, "base_score": base_score}
