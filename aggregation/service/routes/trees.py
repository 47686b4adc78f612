"""Silo endpoints of tree-model runs: the model to grow from, and sealed tree updates."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header, Request, Response
from starlette.concurrency import run_in_threadpool

from aggregation.service import tree_rounds
from aggregation.service.contributions import open_round_for
from aggregation.service.db import transaction
from aggregation.service.deps import FactoryDep, RecorderDep, SiloDep
from aggregation.service.exceptions import Conflict, Forbidden, ServiceError
from aggregation.service.federations import find_silo
from aggregation.service.rounds import get_round
from aggregation.service.routes.silo import accept_statement, record_rejection
from aggregation.service.runs import get_run, spec_of
from aggregation.service.tables import RunSilo
from schemas.signing import STATEMENT_HEADER

router = APIRouter(prefix="/v1/silo/runs", tags=["trees"])


@router.get("/{run_id}/rounds/{number}/tree-base", response_class=Response)
def tree_base(run_id: str, number: int, silo: SiloDep, factory: FactoryDep) -> Response:
    """The native model this silo's trees must grow from (empty body: from scratch)."""
    with transaction(factory) as s:
        if s.get(RunSilo, (run_id, silo.name)) is None:
            raise Forbidden(f"silo {silo.name!r} is not a participant of run {run_id}")
        run = get_run(s, run_id)
        spec = spec_of(run)
        if spec.trees is None:
            raise Conflict(f"run {run_id} trains a PyTorch model, not trees")
        model = tree_rounds.base_model(s, run, get_round(s, run_id, number), spec.trees) or b""
    return Response(model, media_type="application/octet-stream")


@router.post("/{run_id}/rounds/{number}/trees")
async def submit_trees(
    run_id: str,
    number: int,
    request: Request,
    silo: SiloDep,
    factory: FactoryDep,
    recorder: RecorderDep,
    response: Response,
    statement_signature: Annotated[str | None, Header(alias=STATEMENT_HEADER)] = None,
) -> dict[str, object]:
    """Accept a sealed tree update and the silo's signed statement; answer with a receipt."""
    seal_key = request.app.state.seal_key

    def store() -> dict[str, object]:
        with transaction(factory) as s:
            run = get_run(s, run_id)
            spec = spec_of(run)
            if spec.trees is None:
                raise Conflict(f"run {run_id} trains a PyTorch model; send tensor updates")
            rnd = get_round(s, run_id, number)
            existing = tree_rounds.existing_update(s, run_id, number, silo.name)
            if existing is None:
                open_round_for(s, run_id, number, silo.name, "train")
            row = find_silo(s, silo.federation, silo.name)
            assert row is not None
            c, created = tree_rounds.submit_tree_update(
                s, run, rnd, spec, silo.name, row.public_key, silo.body, seal_key
            )
            return accept_statement(s, recorder, silo, run_id, c, created, statement_signature)

    try:
        result = await run_in_threadpool(store)
    except ServiceError as exc:
        await run_in_threadpool(record_rejection, factory, recorder, run_id, number, silo.name, exc)
        raise
    response.status_code = 200 if result["duplicate"] else 201
    return result
