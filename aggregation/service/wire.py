"""The wire at the hub: the version header, refusing other versions, `ErrorOut` bodies.

Every answer carries ``X-Fedsilo-Wire: 3`` (`WIRE_HEADER`, `WIRE_VERSION`). A ``/v1/`` request
whose header is missing (wire version 1 sent none) or names another version is refused with
400 and code ``wire_version``, naming both versions; ``/healthz`` answers whatever the caller
speaks. Every refusal's body is an `ErrorOut`: the service's own errors (`exceptions`),
FastAPI's request validation (422, ``invalid_payload``) and Starlette's HTTP errors (unknown
route, method not allowed). A database that cannot serve now (down, restarting, out of
connections, a connection lost) answers 503 with ``Retry-After`` (`database_unavailable`),
logged as one rate-limited WARNING line; any other exception stays a 500 with its traceback in
the log. Every answer also lists the statements a silo's request may carry
(``X-Fedsilo-Carries``) and brings back the receipt of one it carried (`schemas.carried`).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from starlette.datastructures import MutableHeaders
from starlette.exceptions import HTTPException as StarletteHTTPException

from aggregation.service import carried
from aggregation.service.exceptions import ServiceError
from aggregation.service.ledger_guard import MESSAGE as LEDGER_GUARD_MESSAGE
from schemas.carried import CARRIABLE_KINDS, CARRIES_HEADER, RECEIPT_HEADER
from schemas.wire import WIRE_HEADER, WIRE_VERSION, ErrorCode, ErrorOut

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

VERSIONED_PREFIX = "/v1/"
CARRIES = ",".join(CARRIABLE_KINDS)  # the statements a request may carry (`schemas.carried`)

CODE_OF_STATUS = {
    400: ErrorCode.invalid_payload,
    401: ErrorCode.unauthorized,
    403: ErrorCode.forbidden,
    404: ErrorCode.not_found,
    405: ErrorCode.not_found,
    409: ErrorCode.conflict,
    413: ErrorCode.too_large,
    422: ErrorCode.invalid_payload,
}


RETRY_AFTER_S = 5  # how long a client waits before it retries while the database is away
UNAVAILABLE_DETAIL = (
    "the service's database is unavailable (restarting, unreachable or out of connections); "
    f"retry in {RETRY_AFTER_S} s"
)
# SQLSTATE classes of a database that cannot serve now: connection exception, insufficient
# resources (too many clients, disk full), operator intervention (shutdown, cannot connect now)
_UNAVAILABLE_CLASSES = ("08", "53", "57")
log = logging.getLogger("fedsilo.service.database")


def database_unavailable(exc: BaseException) -> str | None:
    """Why the database cannot serve now, one line without credentials; None for any other
    error (a bug, which stays a 500)."""
    if isinstance(exc, PoolTimeout):
        return f"no free database connection in the pool: {exc}".splitlines()[0]
    orig = exc.orig if isinstance(exc, DBAPIError) else exc
    reason = (str(orig).strip().splitlines() or [type(orig).__name__])[0][:300]
    sqlstate = str(getattr(orig, "sqlstate", "") or "")
    if isinstance(exc, DBAPIError) and exc.connection_invalidated:
        return reason
    if sqlstate[:2] in _UNAVAILABLE_CLASSES:
        return reason
    if sqlstate == "42501" and LEDGER_GUARD_MESSAGE not in reason:
        # a revoked grant or a read-only role: the operator's to fix, not the request's fault;
        # the ledger guard's refusal uses the same code and stays a 500 (a bug of ours)
        return reason
    # psycopg's OperationalError (or a subclass: ConnectionTimeout) without a SQLSTATE: the
    # connection failed or broke
    driver = type(orig).__module__.split(".")[0]
    psycopg_operational = any(
        c.__module__.startswith("psycopg") and c.__name__ == "OperationalError"
        for c in type(orig).__mro__
    )
    if psycopg_operational and not sqlstate:
        return reason
    # SQLite's busy timeout ran out ("no such table" is an OperationalError too: a bug, 500)
    if driver == "sqlite3" and ("database is locked" in reason or "unable to open" in reason):
        return reason
    return None


class _RateLimitedWarning:
    """One WARNING line per `every_s` for the database being away, with how many requests
    were answered 503 since the last line: a restart must not flood the log."""

    def __init__(self, every_s: float = 10.0) -> None:
        self.every_s = every_s
        self._lock = threading.Lock()
        self._last = float("-inf")
        self._suppressed = 0

    def __call__(self, reason: str) -> None:
        with self._lock:
            now = time.monotonic()
            if now - self._last < self.every_s:
                self._suppressed += 1
                return
            more, self._suppressed, self._last = self._suppressed, 0, now
        extra = f" ({more} more 503s since the last line)" if more else ""
        log.warning("database unavailable, answering 503: %s%s", reason, extra)


def error_body(code: ErrorCode, detail: str) -> bytes:
    """The JSON of an `ErrorOut` (also used by the TLS middleware, outside FastAPI)."""
    return ErrorOut(code=code, detail=detail).model_dump_json().encode()


def error_response(status: int, code: ErrorCode, detail: str) -> JSONResponse:
    return JSONResponse(ErrorOut(code=code, detail=detail).model_dump(mode="json"), status)


def version_problem(theirs: str | None) -> str | None:
    """Why a request's wire header is refused, naming both versions; None when it is ours."""
    if theirs is not None and theirs.strip() == str(WIRE_VERSION):
        return None
    if theirs is None:
        said = f"sends no {WIRE_HEADER} header, so it speaks wire version 1"
    else:
        said = f"speaks wire version {theirs.strip()[:20]!r} ({WIRE_HEADER})"
    return (
        f"the client {said}; this service speaks wire version {WIRE_VERSION}: install the same "
        "fedsilo release on the silo, the coordinator and the service"
    )


class WireVersion:
    """ASGI middleware: stamp every answer with the wire version, refuse other versions."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def stamped(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                headers[WIRE_HEADER] = str(WIRE_VERSION)
                headers[CARRIES_HEADER] = CARRIES
                receipt = carried.receipt_of(scope)
                if receipt is not None:
                    headers[RECEIPT_HEADER] = receipt
            await send(message)

        if scope["path"].startswith(VERSIONED_PREFIX):
            theirs = None
            for key, value in scope["headers"]:
                if key.decode("latin1").lower() == WIRE_HEADER.lower():
                    theirs = value.decode("latin1")
            problem = version_problem(theirs)
            if problem is not None:
                refusal = error_response(400, ErrorCode.wire_version, problem)
                await refusal(scope, receive, stamped)
                return
        await self.app(scope, receive, stamped)


def install(app: FastAPI) -> None:
    """The exception handlers that answer `ErrorOut`, and the version middleware (outermost
    of the middlewares added so far: install it after the others)."""

    @app.exception_handler(ServiceError)
    async def _service_error(_request: Request, exc: ServiceError) -> JSONResponse:
        return error_response(exc.status_code, exc.code, exc.detail)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg', '')}"
            for e in exc.errors()
        )
        return error_response(422, ErrorCode.invalid_payload, f"malformed request: {problems}")

    @app.exception_handler(StarletteHTTPException)
    async def _http(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = CODE_OF_STATUS.get(exc.status_code, ErrorCode.internal)
        return error_response(exc.status_code, code, str(exc.detail))

    warn = _RateLimitedWarning()

    async def _database(_request: Request, exc: Exception) -> JSONResponse:
        reason = database_unavailable(exc)
        if reason is None:
            raise exc  # a bug: the 500 handler below answers, Starlette logs the traceback
        warn(reason)
        answer = error_response(503, ErrorCode.internal, UNAVAILABLE_DETAIL)
        answer.headers["Retry-After"] = str(RETRY_AFTER_S)
        return answer

    # registered by class, so Starlette's ExceptionMiddleware answers them without re-raising
    # (no traceback); the catch-all below would re-raise after answering
    app.add_exception_handler(DBAPIError, _database)
    app.add_exception_handler(PoolTimeout, _database)

    @app.exception_handler(Exception)
    async def _internal(_request: Request, exc: Exception) -> JSONResponse:
        # Starlette logs the exception and re-raises it after this answer
        return error_response(500, ErrorCode.internal, "internal error; see the service log")

    app.add_middleware(WireVersion)
