"""Silo endpoints of secure-histogram runs (tree mode ``secure-hist``).

POST a session message (advert, masked vector, survivor signature, unmask answer) for the
run's open aggregation; GET a step's protocol messages (the inbox, octet-stream frames); GET
the federation's cut points and base score once the setup aggregation is done. Tasks come
through the ordinary task poll. The service sees masked vectors and their sums only.
"""

from __future__ import annotations

import json
from typing import Annotated

from fastapi import APIRouter, Query, Response
from starlette.concurrency import run_in_threadpool

from aggregation.service.db import transaction
from aggregation.service.deps import (
    OCTET_BODY,
    SILO_ERRORS,
    FactoryDep,
    HubDep,
    ParticipantDep,
    RunId,
    Stage,
    octet_stream,
)
from aggregation.service.engines import secure_hist
from aggregation.service.engines.base import Answer
from aggregation.service.engines.context import require_running, round_context
from aggregation.service.engines.registry import engine_for
from aggregation.service.exceptions import Conflict, InvalidPayload
from aggregation.service.hist_mailbox import LevelClaim
from aggregation.service.hist_state import hist_row
from aggregation.service.runs import get_run
from aggregation.service.statements import record_rejection
from schemas.frames import pack_frames
from schemas.wire import INT32_MAX, OCTET_STREAM

router = APIRouter(
    prefix="/v1/silo/runs/{run_id}/hist", tags=["secure-hist"], responses=SILO_ERRORS
)
Bounded = Annotated[int, Query(ge=0, le=INT32_MAX)]
MAX_NODES_CHARS = 65_536


def _nodes(raw: str) -> tuple[int, ...]:
    try:
        ids = tuple(int(n) for n in raw.split(",") if n != "")
    except ValueError:
        raise InvalidPayload(f"nodes must be comma-separated node ids, got {raw[:80]!r}") from None
    if any(n > INT32_MAX for n in ids):
        raise InvalidPayload(f"nodes: a node id is over {INT32_MAX}")
    return ids


@router.get(
    "/inbox",
    response_class=Response,
    responses={
        **octet_stream("the step's protocol messages, as frames"),
        204: {"description": "nothing is waiting"},
    },
)
def inbox(
    run_id: RunId,
    counter: Bounded,
    silo: ParticipantDep,
    factory: FactoryDep,
    hub: HubDep,
) -> Response:
    """The protocol messages of this silo's step at aggregation `counter`, as frames: the
    aggregation (or unmask) request, then at the setup aggregation every silo's advert."""
    with transaction(factory) as s:
        run = get_run(s, run_id)
        if not run.current_round:
            return Response(status_code=204)
        frames = secure_hist.inbox(
            round_context(s, hub, run_id, run.current_round), silo.name, counter
        )
    if frames is None:
        return Response(status_code=204)
    return Response(pack_frames(frames), media_type=OCTET_STREAM)


@router.post("/{stage}", openapi_extra=OCTET_BODY)
async def post_message(
    run_id: RunId,
    stage: Stage,
    silo: ParticipantDep,
    factory: FactoryDep,
    hub: HubDep,
    tree: Bounded | None = None,
    depth: Bounded | None = None,
    nodes: Annotated[str, Query(max_length=MAX_NODES_CHARS, pattern=r"^[0-9,]*$")] = "",
) -> dict[str, object]:
    """One session message; a level's masked vector names the level it answers
    (``?tree=&depth=&nodes=1,2``). Answers where the run stands."""
    claim = LevelClaim(tree, depth, _nodes(nodes))
    step = secure_hist.STEP_PREFIX + stage
    answer = Answer(silo.federation, silo.name, step, silo.body, {"claim": claim})
    number = 0

    def store() -> dict[str, object]:
        nonlocal number
        with transaction(factory) as s:
            number = get_run(s, run_id).current_round
            # locks in the order closing.close_round takes them: round, then the run's state
            ctx = round_context(s, hub, run_id, number, lock_round=True)
            require_running(ctx, silo.name)
            return engine_for(ctx.spec, ctx.rnd).receive(ctx, answer)

    try:
        return await run_in_threadpool(store)
    except InvalidPayload as exc:
        await run_in_threadpool(record_rejection, factory, run_id, number, silo.name, exc)
        raise


@router.get("/cuts")
def cuts(run_id: RunId, silo: ParticipantDep, factory: FactoryDep) -> dict[str, object]:
    """The federation's cut points (JSON lists, float32 values) and base score."""
    with transaction(factory) as s:
        row = hist_row(s, run_id)
        if row is None or row.cuts_json is None:
            raise Conflict(f"run {run_id}: the setup aggregation has not finished yet")
        base_score = json.loads(row.state_json)["base_score"]
        return {"cuts": row.cuts_json, "base_score": base_score}
