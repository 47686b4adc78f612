"""The wire at the hub: the version header, refusing other versions, `ErrorOut` bodies.

Every answer carries ``X-Fedsilo-Wire: 3`` (`WIRE_HEADER`, `WIRE_VERSION`). A ``/v1/`` request
whose header is missing (wire version 1 sent none) or names another version is refused with
400 and code ``wire_version``, naming both versions; ``/healthz`` answers whatever the caller
speaks. Every refusal's body is an `ErrorOut`: the service's own errors (`exceptions`),
FastAPI's request validation (422, ``invalid_payload``) and Starlette's HTTP errors (unknown
route, method not allowed). Every answer also lists the statements a silo's request may carry
(``X-Fedsilo-Carries``) and brings back the receipt of one it carried (`schemas.carried`).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.datastructures import MutableHeaders
from starlette.exceptions import HTTPException as StarletteHTTPException

from aggregation.service import carried
from aggregation.service.exceptions import ServiceError
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

    @app.exception_handler(Exception)
    async def _internal(_request: Request, exc: Exception) -> JSONResponse:
        # Starlette logs the exception and re-raises it after this answer
        return error_response(500, ErrorCode.internal, "internal error; see the service log")

    app.add_middleware(WireVersion)
