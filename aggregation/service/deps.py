"""FastAPI dependencies: settings, database sessions, the engines' `Hub`, caller identity
(coordinator, silo, participant of the run), size-limited bodies."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Header, Request
from sqlalchemy.orm import Session, sessionmaker
from starlette.concurrency import run_in_threadpool

from aggregation.service.auth import SiloIdentity, check_admin, verify_silo_request
from aggregation.service.db import transaction
from aggregation.service.engines.base import Hub
from aggregation.service.exceptions import PayloadTooLarge
from aggregation.service.lineage import Recorder
from aggregation.service.runs import check_participant
from aggregation.service.settings import ServiceSettings


def get_settings(request: Request) -> ServiceSettings:
    return request.app.state.settings


def get_factory(request: Request) -> sessionmaker[Session]:
    return request.app.state.sessions


SettingsDep = Annotated[ServiceSettings, Depends(get_settings)]
FactoryDep = Annotated[sessionmaker[Session], Depends(get_factory)]


async def read_limited_body(request: Request, limit: int) -> bytes:
    """Read the body, refusing (413) as soon as it passes `limit` bytes."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(
            f"request body of {declared} bytes exceeds the limit of {limit} bytes"
        )
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"request body exceeds the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


async def require_admin(
    request: Request, authorization: Annotated[str | None, Header()] = None
) -> None:
    check_admin(authorization, request.app.state.admin_token)


async def require_silo(request: Request) -> SiloIdentity:
    settings: ServiceSettings = request.app.state.settings
    body = await read_limited_body(request, settings.max_body_bytes)
    path = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    headers = {k.lower(): v for k, v in request.headers.items()}
    return await run_in_threadpool(
        verify_silo_request,
        request.app.state.sessions,
        method=request.method,
        path=path,
        body=body,
        headers=headers,
    )


AdminDep = Depends(require_admin)
SiloDep = Annotated[SiloIdentity, Depends(require_silo)]


def get_recorder(request: Request) -> Recorder:
    return request.app.state.recorder


RecorderDep = Annotated[Recorder, Depends(get_recorder)]


def get_hub(request: Request) -> Hub:
    return request.app.state.hub


HubDep = Annotated[Hub, Depends(get_hub)]


def require_participant(run_id: str, silo: SiloDep, factory: FactoryDep) -> SiloIdentity:
    """The calling silo, when it takes part in run `run_id` (404 unknown run, 403 not one of
    its participants)."""
    with transaction(factory) as s:
        check_participant(s, run_id, silo.name)
    return silo


ParticipantDep = Annotated[SiloIdentity, Depends(require_participant)]
