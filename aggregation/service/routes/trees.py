"""Silo endpoints of tree-model runs: the model to grow from, and sealed tree updates."""

from __future__ import annotations

from fastapi import APIRouter, Response

from aggregation.service import tree_rounds
from aggregation.service.db import transaction
from aggregation.service.deps import (
    OCTET_BODY,
    SILO_ERRORS,
    FactoryDep,
    HubDep,
    ParticipantDep,
    RoundNumber,
    RunId,
    StatementSignature,
    octet_stream,
)
from aggregation.service.exceptions import Conflict
from aggregation.service.rounds import get_round
from aggregation.service.routes.dispatch import submission
from aggregation.service.runs import get_run, spec_of
from schemas.wire import OCTET_STREAM

router = APIRouter(prefix="/v1/silo/runs", tags=["trees"], responses=SILO_ERRORS)


@router.get(
    "/{run_id}/rounds/{number}/tree-base",
    response_class=Response,
    responses=octet_stream("the native model to grow from (empty: from scratch)"),
)
def tree_base(
    run_id: RunId, number: RoundNumber, silo: ParticipantDep, factory: FactoryDep
) -> Response:
    """The native model this silo's trees must grow from (empty body: from scratch)."""
    with transaction(factory) as s:
        run = get_run(s, run_id)
        spec = spec_of(run)
        if spec.trees is None:
            raise Conflict(f"run {run_id} trains a PyTorch model, not trees")
        model = tree_rounds.base_model(s, run, get_round(s, run_id, number), spec.trees) or b""
    return Response(model, media_type=OCTET_STREAM)


@router.post("/{run_id}/rounds/{number}/trees", openapi_extra=OCTET_BODY)
async def submit_trees(
    run_id: RunId,
    number: RoundNumber,
    silo: ParticipantDep,
    factory: FactoryDep,
    hub: HubDep,
    response: Response,
    statement_signature: StatementSignature = None,
) -> dict[str, object]:
    """Accept a sealed tree update and the silo's signed statement; answer with a receipt."""
    args = (run_id, number, silo, factory, hub, response, statement_signature)
    return await submission("trees", *args)
