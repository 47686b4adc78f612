"""The lineage ledger, read by the coordinator, reviewers and `fedsilo lineage verify`."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import PlainTextResponse

from aggregation.service.checkpoints import anchored
from aggregation.service.db import transaction
from aggregation.service.deps import ADMIN_ERRORS, AdminDep, FactoryDep, OptionalName
from aggregation.service.federations import silo_keys
from aggregation.service.keys import public_hex
from aggregation.service.ledger import iter_records, records_after
from schemas.ledger_export import export_entries
from schemas.lineage import LineageEntry
from schemas.wire import INT32_MAX

router = APIRouter(
    prefix="/v1/ledger", tags=["ledger"], dependencies=[AdminDep], responses=ADMIN_ERRORS
)
MAX_ENTRIES = 10_000


@router.get("")
def entries(
    factory: FactoryDep,
    run_id: OptionalName = None,
    after: Annotated[int, Query(ge=0, le=INT32_MAX, description="entries past this seq")] = 0,
    limit: Annotated[int, Query(ge=1, le=MAX_ENTRIES)] = MAX_ENTRIES,
) -> list[LineageEntry]:
    """Entries in seq order; `run_id` keeps that run's entries (and federation-wide ones out)."""
    with transaction(factory) as s:
        return records_after(s, after=after, run_id=run_id, limit=limit)


@router.get(
    "/export",
    response_class=Response,  # so the error answers are documented as JSON
    responses={200: {"content": {"application/x-ndjson": {"schema": {"type": "string"}}}}},
)
def export(factory: FactoryDep) -> PlainTextResponse:
    """The whole ledger as JSON Lines with a trailer (verification needs the whole chain)."""
    with transaction(factory) as s:
        # checkpoints read before the entries (the generator runs inside export_entries): each
        # is committed with the entries it names, so none is above the export's end, which
        # verification reports as entries removed
        text = export_entries(iter_records(s), anchored(s))
    return PlainTextResponse(text, media_type="application/x-ndjson")


@router.get("/keys")
def keys(request: Request, factory: FactoryDep) -> dict[str, str]:
    """Public keys of every ledger author: the service and each enrolled silo."""
    out = {"service": public_hex(request.app.state.recorder.service_key)}
    with transaction(factory) as s:
        out.update(silo_keys(s))
    return out
