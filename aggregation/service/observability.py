"""What operators watch: Prometheus ``/metrics``, ``/readyz``, and one log line per request.

- ``/metrics`` (Prometheus text) on the API port needs ``Authorization: Bearer <token>``, the
  ``metrics_token`` setting or else the admin token: the metrics name silos and rejection
  causes. A scraper is better pointed at the *ops port* (``metrics_port``, bound to
  ``metrics_host``, default 127.0.0.1): plain HTTP, no authentication, serving ``/metrics``,
  ``/readyz`` and ``/healthz`` only; keep it on a private interface. (In production every API
  request needs a client certificate, and only the coordinator's may carry a bearer token.)
- ``/readyz`` runs ``SELECT 1`` and compares the database's Alembic revision with this
  release's head: 200 ``{"status": "ready"}`` or 503 with the reason. ``/healthz`` stays the
  liveness check (the process answers) and never touches the database.
- `RequestLog` (outermost middleware) gives each request an id (``X-Request-Id`` when the
  caller sends a sane one, else a new one; echoed in the answer), counts it by route template
  and status, and logs one line: INFO (DEBUG for successful probes and scrapes), WARNING for
  401/403/409 (with the refusal's detail), ERROR for 5xx (DEBUG for a 503 with
  ``Retry-After``: a database outage, which `wire` logs as one rate-limited WARNING line).
  `configure_logging` picks JSON lines or text; ``fedsilo aggregator serve`` calls it
  (``--log-format``), an app embedded elsewhere leaves logging to its host.
"""

from __future__ import annotations

import contextvars
import hmac
import json
import logging
import re
import sys
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, MutableMapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, TextIO

from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from fastapi import FastAPI, Header
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pythonjsonlogger.json import JsonFormatter
from sqlalchemy import Engine, event, text
from sqlalchemy.exc import SQLAlchemyError
from starlette.datastructures import MutableHeaders

from aggregation.service import migrate, round_metrics
from aggregation.service.exceptions import Unauthorized
from aggregation.service.metrics import INFO_KEY, ServiceMetrics
from schemas import signing

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

REQUEST_ID_HEADER = "X-Request-Id"
REQUEST_ID: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")
_SANE_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")
WARN_STATUSES = frozenset({401, 403, 409})
PROBE_ROUTES = frozenset({"/healthz", "/readyz", "/metrics"})
SQL_OPERATIONS = frozenset({"SELECT", "INSERT", "UPDATE", "DELETE", "WITH"})
log = logging.getLogger("fedsilo.service.http")


def install(app: FastAPI) -> ServiceMetrics:
    """Metrics, ``/metrics``, ``/readyz`` and the request log for an app made by `create_app`
    (call it last: the request log must be the outermost middleware)."""
    metrics = ServiceMetrics()
    engine: Engine = app.state.engine
    app.state.metrics = metrics
    app.state.sessions.configure(info={INFO_KEY: metrics})
    time_statements(engine, metrics)
    round_metrics.watch(app.state.sessions, metrics)
    heads = frozenset(ScriptDirectory.from_config(migrate.alembic_config("sqlite://")).get_heads())
    app.state.migration_heads = heads

    @app.get("/metrics", include_in_schema=False)
    def scrape(authorization: str | None = Header(default=None)) -> Response:
        token = app.state.settings.metrics_token or app.state.admin_token
        given = (authorization or "").removeprefix("Bearer ").strip()
        # bytes: compare_digest refuses str holding non-ASCII characters (a TypeError, a 500)
        same = hmac.compare_digest(given.encode("utf-8", "surrogatepass"), token.encode())
        if not authorization or not same:
            raise Unauthorized("/metrics: send 'Authorization: Bearer <metrics token>'")
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/readyz", include_in_schema=False)
    def readyz() -> JSONResponse:
        problem = readiness(engine, heads)
        metrics.ready.set(0 if problem else 1)
        if problem:
            return JSONResponse({"status": "unavailable", "reason": problem}, 503)
        return JSONResponse({"status": "ready"})

    app.add_middleware(RequestLog, metrics=metrics)
    return metrics


def time_statements(engine: Engine, metrics: ServiceMetrics) -> None:
    """Observe every statement's latency on `engine` (cursor execute to its return)."""
    by_verb = {verb: metrics.db_seconds.labels(verb.lower()) for verb in SQL_OPERATIONS}
    other = metrics.db_seconds.labels("other")

    @event.listens_for(engine, "before_cursor_execute")
    def _start(conn, _cursor, _statement, _params, _context, _many):  # type: ignore[no-untyped-def]
        conn.info["fedsilo_t0"] = time.perf_counter()

    @event.listens_for(engine, "after_cursor_execute")
    def _end(conn, _cursor, statement, _params, _context, _many):  # type: ignore[no-untyped-def]
        started = conn.info.pop("fedsilo_t0", None)
        if started is not None:
            head = statement.lstrip()[:6].upper()  # SELECT, INSERT, UPDATE, DELETE or WITH
            child = by_verb.get(head) or by_verb.get(head[:4]) or other
            child.observe(time.perf_counter() - started)


def readiness(engine: Engine, heads: frozenset[str]) -> str | None:
    """None when the database answers and carries this release's schema, else why not."""
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
            current = frozenset(MigrationContext.configure(conn).get_current_heads())
    except SQLAlchemyError as exc:
        first = str(getattr(exc, "orig", None) or exc).strip().splitlines()
        return f"database unreachable: {type(exc).__name__}: {(first or [''])[0][:200]}"
    if current != heads:
        return (
            f"database schema is at revision {', '.join(sorted(current)) or 'none'}, this "
            f"release needs {', '.join(sorted(heads))}; restart the service to migrate it"
        )
    return None


# --- the request log -----------------------------------------------------------------------


def _request_id(scope: Scope) -> str:
    for key, value in scope["headers"]:
        if key == b"x-request-id":
            candidate = value.decode("latin1")
            if _SANE_ID.match(candidate):
                return candidate
    return uuid.uuid4().hex


def _identity(scope: Scope) -> dict[str, str]:
    """Who the request says it is (verified unless it was refused 401)."""
    headers = {k.decode("latin1").lower(): v.decode("latin1") for k, v in scope["headers"]}
    out = {}
    if silo := headers.get(signing.HEADER_SILO.lower()):
        out["silo"] = silo[:64]
        out["federation"] = headers.get(signing.HEADER_FEDERATION.lower(), "")[:64]
    if "authorization" in headers:
        out["caller"] = "admin"
    return out


def _route(scope: Scope) -> str:
    """The matched route's template (bounded label values); '<unmatched>' otherwise."""
    route = scope.get("route")
    return getattr(route, "path", None) or "<unmatched>"


def _detail(body: bytes) -> str:
    try:
        return str(json.loads(body).get("detail", ""))[:500]
    except (ValueError, AttributeError):
        return body[:200].decode("utf-8", "replace")


class RequestLog:
    """ASGI middleware: request id, HTTP metrics, one log line per request."""

    def __init__(self, app: ASGIApp, metrics: ServiceMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rid = _request_id(scope)
        token = REQUEST_ID.set(rid)
        started = time.perf_counter()
        status, body, retry_later = 500, bytearray(), False

        async def answer(message: Message) -> None:
            nonlocal status, retry_later
            if message["type"] == "http.response.start":
                status = message["status"]
                retry_later = any(
                    k.lower() == b"retry-after" for k, _ in message.get("headers", ())
                )
                MutableHeaders(scope=message)[REQUEST_ID_HEADER] = rid
            elif message["type"] == "http.response.body" and status in WARN_STATUSES:
                body.extend(message.get("body", b"")[: 4096 - len(body)])
            await send(message)

        try:
            await self.app(scope, receive, answer)
        finally:
            seconds = time.perf_counter() - started
            self._record(scope, rid, status, bytes(body), seconds, quiet=retry_later)
            REQUEST_ID.reset(token)

    def _record(
        self, scope: Scope, rid: str, status: int, body: bytes, seconds: float, quiet: bool = False
    ) -> None:
        method, route = scope["method"], _route(scope)
        self.metrics.http_requests.labels(method, route, str(status)).inc()
        self.metrics.http_seconds.labels(method, route).observe(seconds)
        fields: dict[str, Any] = {
            "request_id": rid,
            "method": method,
            "route": route,
            "path": scope["path"],
            "status": status,
            "duration_ms": round(seconds * 1000, 2),
            "client": (scope.get("client") or ("-",))[0],
            **_identity(scope),
        }
        who = f" silo={fields['silo']}" if "silo" in fields else ""
        who += " caller=admin" if "caller" in fields else ""
        line = f"{method} {scope['path']} {status} {fields['duration_ms']}ms{who}"
        if status in WARN_STATUSES:
            fields["detail"] = _detail(body)
            log.warning("%s: %s", line, fields["detail"], extra=fields)
        elif status == 503 and quiet:
            log.debug(line, extra=fields)  # a database outage: `wire` logs it, rate-limited
        elif status >= 500:
            log.error(line, extra=fields)
        elif route in PROBE_ROUTES or status == 204:
            # probes, scrapes and empty long-polls come every few seconds: DEBUG, so a stuck
            # federation's log stays quiet (the fault tests watch logs for progress)
            log.debug(line, extra=fields)
        else:
            log.info(line, extra=fields)


# --- logging configuration -----------------------------------------------------------------


class _RequestIdFilter(logging.Filter):
    """Stamp every record with the request being served (or '-')."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            record.request_id = REQUEST_ID.get()
        return True


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever sys.stderr is when a record comes (it may be replaced later)."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property  # type: ignore[override]
    def stream(self) -> TextIO:
        return sys.stderr

    @stream.setter
    def stream(self, _value: TextIO) -> None:
        pass


TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s"
JSON_FIELDS = "{asctime}{levelname}{name}{message}"


def configure_logging(
    fmt: str,
    level: str = "INFO",
    stream: TextIO | None = None,
    loggers: tuple[str, ...] = ("fedsilo", "uvicorn", "uvicorn.error"),
) -> logging.Handler:
    """Send `loggers` to one handler (stderr, or `stream`) as JSON lines or text; replaces
    the handler an earlier call installed. Returns the handler."""
    handler: logging.Handler = logging.StreamHandler(stream) if stream else _StderrHandler()
    if fmt == "json":
        handler.setFormatter(
            JsonFormatter(
                JSON_FIELDS, style="{", rename_fields={"levelname": "level", "asctime": "time"}
            )
        )
    else:
        handler.setFormatter(logging.Formatter(TEXT_FORMAT))
    handler.addFilter(_RequestIdFilter())
    handler.set_name("fedsilo-observability")
    for name in loggers:
        logger = logging.getLogger(name)
        for old in [h for h in logger.handlers if h.get_name() == "fedsilo-observability"]:
            logger.removeHandler(old)
        if name.startswith("uvicorn"):
            logger.handlers.clear()  # uvicorn's own text handler would print a second copy
        logger.addHandler(handler)
        logger.propagate = False
    logging.getLogger("fedsilo").setLevel(level)
    return handler


# --- the ops port --------------------------------------------------------------------------


def start_ops_port(app: FastAPI) -> Callable[[], None]:
    """Serve /metrics, /readyz and /healthz unauthenticated on ``metrics_port`` (when set);
    returns the function that stops it."""
    settings = app.state.settings
    if settings.metrics_port is None:
        return lambda: None
    metrics: ServiceMetrics = app.state.metrics
    engine, heads = app.state.engine, app.state.migration_heads

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            status, ctype, body = 404, "text/plain", b"not found: /metrics, /readyz, /healthz\n"
            if self.path == "/metrics":
                status, ctype, body = 200, CONTENT_TYPE_LATEST, generate_latest(metrics.registry)
            elif self.path == "/healthz":
                status, ctype, body = 200, "application/json", b'{"status": "ok"}'
            elif self.path == "/readyz":
                problem = readiness(engine, heads)
                metrics.ready.set(0 if problem else 1)
                answer = {"status": "unavailable", "reason": problem} if problem else {}
                status, ctype = (503, "application/json") if problem else (200, "application/json")
                body = json.dumps(answer or {"status": "ready"}).encode()
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_args: Any) -> None:  # scrapes every few seconds: not logged
            pass

    server = ThreadingHTTPServer((settings.metrics_host, settings.metrics_port), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, name="fedsilo-ops", daemon=True)
    thread.start()
    logging.getLogger("fedsilo.service").info(
        "ops port: /metrics, /readyz, /healthz on http://%s:%s",
        settings.metrics_host,
        settings.metrics_port,
    )

    def stop() -> None:
        server.shutdown()
        server.server_close()
        thread.join(5)

    return stop
