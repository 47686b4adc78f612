"""Published data contracts: the coordinator publishes and lists them (admin token), silos read
them by signed request (their federation is the one they enrolled in)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Response

from aggregation.service import contracts as crud
from aggregation.service.db import transaction
from aggregation.service.deps import (
    ADMIN_ERRORS,
    SILO_ERRORS,
    AdminDep,
    FactoryDep,
    Name,
    RecorderDep,
    SiloDep,
)
from schemas.contract_registry import CONTRACT_VERSION_PATTERN, ContractPublish, PublishedContract

router = APIRouter(prefix="/v1", tags=["contracts"])
Version = Annotated[
    str, Path(pattern=CONTRACT_VERSION_PATTERN, description="a contract version, e.g. 1.2.0")
]


@router.post(
    "/federations/{federation}/contracts",
    status_code=201,
    dependencies=[AdminDep],
    responses={**ADMIN_ERRORS, 200: {"description": "this exact version was published before"}},
)
def publish_contract(
    federation: Name,
    body: ContractPublish,
    factory: FactoryDep,
    recorder: RecorderDep,
    response: Response,
) -> PublishedContract:
    """Publish a signed contract version; the identical one again answers 200, nothing new."""
    with transaction(factory) as s:
        row, created = crud.publish(s, federation, body)
        if created:
            payload = {
                "federation": federation,
                "name": row.name,
                "version": row.version,
                "sha256": row.sha256,
                "signer": row.signer,
            }
            recorder.service(s, "contract_published", payload, None)
        else:
            response.status_code = 200
        return crud.published_out(row)


@router.get("/federations/{federation}/contracts", dependencies=[AdminDep], responses=ADMIN_ERRORS)
def list_contracts(federation: Name, factory: FactoryDep) -> list[PublishedContract]:
    with transaction(factory) as s:
        return [crud.published_out(r) for r in crud.list_published(s, federation)]


@router.get(
    "/federations/{federation}/contracts/{name}", dependencies=[AdminDep], responses=ADMIN_ERRORS
)
def latest_contract(federation: Name, name: Name, factory: FactoryDep) -> PublishedContract:
    with transaction(factory) as s:
        return crud.published_out(crud.get(s, federation, name, None))


@router.get(
    "/federations/{federation}/contracts/{name}/{version}",
    dependencies=[AdminDep],
    responses=ADMIN_ERRORS,
)
def contract_version(
    federation: Name, name: Name, version: Version, factory: FactoryDep
) -> PublishedContract:
    with transaction(factory) as s:
        return crud.published_out(crud.get(s, federation, name, version))


@router.get("/silo/contracts/{name}", responses=SILO_ERRORS)
def silo_latest_contract(name: Name, silo: SiloDep, factory: FactoryDep) -> PublishedContract:
    """The latest version of a contract of the calling silo's federation."""
    with transaction(factory) as s:
        return crud.published_out(crud.get(s, silo.federation, name, None))


@router.get("/silo/contracts/{name}/{version}", responses=SILO_ERRORS)
def silo_contract_version(
    name: Name, version: Version, silo: SiloDep, factory: FactoryDep
) -> PublishedContract:
    with transaction(factory) as s:
        return crud.published_out(crud.get(s, silo.federation, name, version))
