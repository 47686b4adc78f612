"""Federations and silo enrolment."""

from __future__ import annotations

from fastapi import APIRouter

from aggregation.service import federations as crud
from aggregation.service import revocation
from aggregation.service.db import transaction
from aggregation.service.deps import (
    ADMIN_ERRORS,
    AdminDep,
    FactoryDep,
    HubDep,
    Name,
    RecorderDep,
    errors,
)
from schemas.wire import EnrolRequest, FederationCreate, FederationOut, SiloOut

router = APIRouter(prefix="/v1", tags=["federations"])


@router.post("/federations", status_code=201, dependencies=[AdminDep], responses=ADMIN_ERRORS)
def create_federation(body: FederationCreate, factory: FactoryDep) -> FederationOut:
    with transaction(factory) as s:
        return crud.federation_out(
            crud.create_federation(s, name=body.name, description=body.description)
        )


@router.get("/federations", dependencies=[AdminDep], responses=ADMIN_ERRORS)
def list_federations(factory: FactoryDep) -> list[FederationOut]:
    with transaction(factory) as s:
        return [crud.federation_out(f) for f in crud.list_federations(s)]


@router.get("/federations/{federation}/silos", dependencies=[AdminDep], responses=ADMIN_ERRORS)
def list_silos(federation: Name, factory: FactoryDep) -> list[SiloOut]:
    with transaction(factory) as s:
        return [_listed(crud.silo_out(x)) for x in crud.list_silos(s, federation)]


def _listed(silo: SiloOut) -> SiloOut:
    """A revoked silo without its last ready report: it takes part in nothing, however ready
    its agent was before the revocation."""
    return silo.model_copy(update={"ready": None}) if silo.status == "revoked" else silo


@router.post(
    "/federations/{federation}/silos/{silo}/approve",
    dependencies=[AdminDep],
    responses=ADMIN_ERRORS,
)
def approve_silo(
    federation: Name, silo: Name, factory: FactoryDep, recorder: RecorderDep
) -> SiloOut:
    with transaction(factory) as s:
        row = crud.find_silo(s, federation, silo)
        was = row.status if row else None
        row = crud.set_silo_status(s, federation, silo, "approved")
        if was != "approved":
            payload = {"silo": silo, "federation": federation, "public_key": row.public_key}
            recorder.service(s, "silo_joined", payload, None)
        return crud.silo_out(row)


@router.post(
    "/federations/{federation}/silos/{silo}/revoke", dependencies=[AdminDep], responses=ADMIN_ERRORS
)
def revoke_silo(
    federation: Name,
    silo: Name,
    factory: FactoryDep,
    hub: HubDep,
    body: revocation.RevokeRequest | None = None,
) -> SiloOut:
    """Revoke a silo: its later requests are refused, the ledger gets signed ``silo_revoked``
    entries (the federation's, and one per run in progress it leaves), and those runs stop
    waiting for it (`revocation`). The body (optional) gives the reason; revoking a revoked
    silo changes nothing."""
    reason = body.reason if body is not None else None
    with transaction(factory) as s:
        return crud.silo_out(revocation.revoke(s, hub, federation, silo, reason))


@router.post("/enrol", status_code=201, responses=errors(400, 404, 409, 413, 422))
def enrol(body: EnrolRequest, factory: FactoryDep) -> SiloOut:
    """A silo presents its public key and proves it holds the private key."""
    with transaction(factory) as s:
        return crud.silo_out(crud.enrol(s, body))
