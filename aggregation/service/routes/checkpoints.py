"""Ledger checkpoints for silos: fetch the ones to countersign, send the countersignature.

Both are signed silo requests (`deps.SiloDep`). A silo checks each checkpoint's service
signature against the service key it pinned, countersigns it with its identity key and keeps
both in its workspace (`silos/checkpoints.py`); see `schemas.ledger_checkpoint`.
"""

from __future__ import annotations

from typing import Annotated

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from fastapi import APIRouter, Path, Query, Request
from pydantic import ValidationError

from aggregation.service import checkpoints as crud
from aggregation.service.db import transaction
from aggregation.service.deps import SILO_ERRORS, FactoryDep, SiloDep
from aggregation.service.exceptions import InvalidPayload
from aggregation.service.federations import find_silo
from aggregation.service.keys import public_hex
from schemas.ledger_checkpoint import CheckpointList, Countersignature, CountersignIn
from schemas.wire import INT32_MAX

router = APIRouter(prefix="/v1/silo/ledger", tags=["silo"], responses=SILO_ERRORS)
Height = Annotated[int, Path(ge=1, le=INT32_MAX, description="the checkpoint's ledger height")]


@router.get("/checkpoints")
def pending(
    request: Request,
    silo: SiloDep,
    factory: FactoryDep,
    after: Annotated[int, Query(ge=0, le=INT32_MAX, description="heights past this")] = 0,
) -> CheckpointList:
    """Checkpoints of the silo's runs past `after` that it has not countersigned yet."""
    with transaction(factory) as s:
        rows = crud.pending_for_silo(s, silo.federation, silo.name, after=after)
    service_key = public_hex(request.app.state.recorder.service_key)
    return CheckpointList(service_key=service_key, checkpoints=rows)


COUNTERSIGN_BODY = {
    "requestBody": {
        "required": True,
        "content": {"application/json": {"schema": CountersignIn.model_json_schema()}},
    }
}


@router.post("/checkpoints/{height}/countersign", openapi_extra=COUNTERSIGN_BODY)
def countersign(height: Height, silo: SiloDep, factory: FactoryDep) -> Countersignature:
    """Store the silo's countersignature of the checkpoint at `height` (checked first)."""
    try:
        body = CountersignIn.model_validate_json(silo.body)
    except ValidationError as exc:
        raise InvalidPayload(
            f"countersignature from silo {silo.name!r} is malformed: {exc}"
        ) from exc
    with transaction(factory) as s:
        row = find_silo(s, silo.federation, silo.name)
        assert row is not None  # require_silo authenticated it against this row
        key = Ed25519PublicKey.from_public_bytes(bytes.fromhex(row.public_key))
        return crud.add_countersignature(
            s, height=height, silo=silo.name, signature=body.signature, silo_key=key
        )
