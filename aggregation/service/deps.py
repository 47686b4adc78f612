"""FastAPI dependencies: settings, database sessions, the engines' `Hub`, caller identity
(coordinator, silo, participant of the run), size-limited bodies; the bounded parameter types
every route uses, and the error answers routes document in the OpenAPI schema.

Every number a request carries is bounded here, at the edge: path and query integers fit the
database's 32-bit columns, floats are finite, names match `NAME_PATTERN`. Out of range is a
422 ``invalid_payload`` naming the parameter, never a 500.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Depends, Header, Path, Query, Request
from sqlalchemy.orm import Session, sessionmaker
from starlette.concurrency import run_in_threadpool

from aggregation.service import carried
from aggregation.service.auth import SiloIdentity, check_admin, verify_silo_request
from aggregation.service.engines.base import Hub
from aggregation.service.exceptions import PayloadTooLarge
from aggregation.service.lineage import Recorder
from aggregation.service.settings import ServiceSettings
from schemas import carried as carried_wire
from schemas.signing import STATEMENT_HEADER
from schemas.wire import INT32_MAX, NAME_PATTERN, OCTET_STREAM, ErrorOut

RunId = Annotated[str, Path(pattern=NAME_PATTERN, description="the run's id")]
Name = Annotated[str, Path(pattern=NAME_PATTERN, description="a federation or silo name")]
RoundNumber = Annotated[int, Path(ge=0, le=INT32_MAX, description="the round's number")]
ModelVersion = Annotated[int, Path(ge=0, le=INT32_MAX, description="the model's version")]
Stage = Annotated[str, Path(pattern=r"^[a-z][a-z\-]{0,31}$", description="a protocol step")]
OptionalName = Annotated[str | None, Query(pattern=NAME_PATTERN)]
MAX_WAIT_S = 3600.0
Wait = Annotated[float, Query(ge=0, le=MAX_WAIT_S, description="long-poll up to this many seconds")]
MAX_LIMIT = 1000
Limit = Annotated[int, Query(ge=1, le=MAX_LIMIT, description="at most this many rows")]
# the silo's signed ledger statement for what it submits (checked by the round's engine)
StatementSignature = Annotated[str | None, Header(alias=STATEMENT_HEADER, max_length=256)]

ERROR_DESCRIPTIONS = {
    400: "the client speaks another wire version (code wire_version)",
    401: "missing or wrong admin token, or a bad, stale or replayed silo signature",
    403: "the silo is not approved, or takes no part in the run",
    404: "unknown federation, silo, run, round or model",
    409: "wrong state (round closed, stage not ready, run over) or already answered",
    413: "the body is over the configured size limit",
    422: "a malformed body, or a parameter out of range (code invalid_payload)",
}


def errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses=` entries: each status answers an `ErrorOut`."""
    return {s: {"model": ErrorOut, "description": ERROR_DESCRIPTIONS[s]} for s in statuses}


ADMIN_ERRORS = errors(400, 401, 404, 409, 422)
SILO_ERRORS = errors(400, 401, 403, 404, 409, 413, 422)


def octet_stream(description: str) -> dict[int | str, dict[str, Any]]:
    """A 200 answer whose body is raw bytes (`responses=` entry)."""
    return {
        200: {
            "description": description,
            "content": {OCTET_STREAM: {"schema": {"type": "string", "format": "binary"}}},
        }
    }


OCTET_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {OCTET_STREAM: {"schema": {"type": "string", "format": "binary"}}},
    }
}
"""`openapi_extra` of a route that reads its body itself (octet-stream)."""


# The accessors are `async` on purpose: FastAPI runs a plain `def` dependency in a worker
# thread, and each hop there and back cost the event loop far more CPU than the attribute read
# (bench/README.md, "Issue 20: fewer hops, ...").
async def get_settings(request: Request) -> ServiceSettings:
    return request.app.state.settings


async def get_factory(request: Request) -> sessionmaker[Session]:
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


async def require_silo(request: Request, run_id: str | None = None) -> SiloIdentity:
    """The signed request's silo (`auth.verify_silo_request`), a participant of `run_id`
    when given, checked in one transaction."""
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
        run_id=run_id,
    )


async def _silo(request: Request) -> SiloIdentity:
    return await require_silo(request)


AdminDep = Depends(require_admin)
SiloDep = Annotated[SiloIdentity, Depends(_silo)]


async def get_recorder(request: Request) -> Recorder:
    return request.app.state.recorder


RecorderDep = Annotated[Recorder, Depends(get_recorder)]


async def get_hub(request: Request) -> Hub:
    return request.app.state.hub


HubDep = Annotated[Hub, Depends(get_hub)]


async def require_participant(request: Request, run_id: str) -> SiloIdentity:
    """The calling silo, when it takes part in run `run_id` (404 unknown run, 403 not one of
    its participants), in the signature check's transaction. A statement riding on the request
    (`schemas.carried`) is recorded next, before the route runs (`aggregation.service.carried`).
    """
    silo = await require_silo(request, run_id)
    header = request.headers.get(carried_wire.STATEMENT_HEADER)
    if header is not None:
        receipt = await run_in_threadpool(
            carried.record, request.app.state.sessions, request.app.state.recorder, silo, run_id,
            header,
        )  # fmt: skip
        setattr(request.state, carried.STATE_KEY, receipt)
    return silo


ParticipantDep = Annotated[SiloIdentity, Depends(require_participant)]
