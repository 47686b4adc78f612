"""The lineage ledger, read by the coordinator, reviewers and `fedsilo lineage verify`."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import PlainTextResponse

from aggregation.service.db import transaction
from aggregation.service.deps import AdminDep, FactoryDep
from aggregation.service.federations import silo_keys
from aggregation.service.keys import public_hex
from aggregation.service.ledger import iter_records, records_after
from schemas.ledger_export import export_entries
from schemas.lineage import LineageEntry

router = APIRouter(prefix="/v1/ledger", tags=["ledger"], dependencies=[AdminDep])


@router.get("")
def entries(
    factory: FactoryDep, run_id: str | None = None, after: int = 0, limit: int = 10_000
) -> list[LineageEntry]:
    """Entries in seq order; `run_id` keeps that run's entries (and federation-wide ones out)."""
    with transaction(factory) as s:
        return records_after(s, after=after, run_id=run_id, limit=limit)


@router.get("/export", response_class=PlainTextResponse)
def export(factory: FactoryDep) -> PlainTextResponse:
    """The whole ledger as JSON Lines with a trailer (verification needs the whole chain)."""
    with transaction(factory) as s:
        text = export_entries(iter_records(s))
    return PlainTextResponse(text, media_type="application/x-ndjson")


@router.get("/keys")
def keys(request: Request, factory: FactoryDep) -> dict[str, str]:
    """Public keys of every ledger author: the service and each enrolled silo."""
    out = {"service": public_hex(request.app.state.recorder.service_key)}
    with transaction(factory) as s:
        out.update(silo_keys(s))
    return out
