"""The aggregation service's FastAPI application."""

from __future__ import annotations

import logging
from contextlib import asynccontextmanager

from anyio.to_thread import current_default_thread_limiter
from fastapi import FastAPI
from sqlalchemy import Engine, text

from aggregation.service import collective_rounds, ledger_guard, migrate, observability, wire
from aggregation.service.db import make_engine, make_sessionmaker, require_writable
from aggregation.service.engines.base import Hub
from aggregation.service.engines.builtin import register_builtins
from aggregation.service.engines.registry import load_plugins
from aggregation.service.keys import load_or_create_seal_key, load_service_signer
from aggregation.service.lineage import Recorder
from aggregation.service.routes import (
    contracts,
    federations,
    hist,
    ledger,
    runs,
    secagg,
    silo,
    trees,
)
from aggregation.service.routes.checkpoints import router as checkpoints_router
from aggregation.service.routes.vertical import admin as vertical_admin
from aggregation.service.routes.vertical import silo_router as vertical_silo
from aggregation.service.settings import ServiceSettings
from aggregation.service.wakeup import install as install_wakeup
from schemas.sealed import service_public_bytes

log = logging.getLogger("fedsilo.service")


def create_app(settings: ServiceSettings | None = None) -> FastAPI:
    settings = settings or ServiceSettings()
    settings.workspace.mkdir(parents=True, exist_ok=True)
    engine = make_engine(
        settings.resolved_database_url(),
        connect_timeout_s=settings.database_connect_timeout_s,
        statement_timeout_s=settings.database_statement_timeout_s,
    )
    migrate.upgrade(engine)
    require_writable(engine)  # a read-only role would pass /readyz and fail every write
    ledger_guard.require_at_start(engine)  # refuse to run on a ledger whose triggers were dropped

    @asynccontextmanager
    async def lifespan(app: FastAPI):  # type: ignore[no-untyped-def]
        stop_ops_port = observability.start_ops_port(app)  # metrics_port, when set
        # this event loop's pool for sync handlers and long-poll checks (settings.worker_threads)
        current_default_thread_limiter().total_tokens = settings.worker_threads
        yield
        stop_ops_port()
        collective_rounds.stop_all()
        if app.state.wakeup is not None:
            app.state.wakeup.stop()
        engine.dispose()

    docs = settings.docs_exposed()
    app = FastAPI(
        title="fedsilo aggregation service",
        version="1",
        lifespan=lifespan,
        openapi_url="/openapi.json" if docs else None,
        docs_url="/docs" if docs else None,
        redoc_url="/redoc" if docs else None,
    )
    app.state.settings = settings
    app.state.engine = engine
    app.state.sessions = make_sessionmaker(engine)
    app.state.wakeup = install_wakeup(app.state.sessions, engine) if settings.notify else None
    app.state.admin_token = settings.resolved_admin_token()
    app.state.seal_key = load_or_create_seal_key(settings.workspace)
    app.state.seal_public = service_public_bytes(app.state.seal_key)
    app.state.recorder = Recorder(
        load_service_signer(
            settings.workspace,
            key_file=settings.signing_key_file,
            hook=settings.signer,
            # entries signed by a key that is gone: refuse, never sign on with a new one
            create=not _ledger_has_entries(engine),
        ),
        settings.workspace,
    )
    app.state.hub = Hub(app.state.recorder, settings, app.state.seal_key, app.state.seal_public)
    register_builtins()
    load_plugins(settings.plugins)

    # async: answered on the event loop, so a hung database holding every worker thread
    # cannot hold the liveness probe too (it touches no database)
    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok", "mode": settings.mode}

    for module in (federations, contracts, runs, silo, secagg, ledger, trees, hist):
        app.include_router(module.router)
    app.include_router(checkpoints_router)
    app.include_router(vertical_admin)
    app.include_router(vertical_silo)
    wire.install(app)
    if settings.mode == "production":
        from aggregation.service.tls import IdentityBinding

        # a certificate may act only as the party it names (silo, coordinator): see tls.py
        app.add_middleware(IdentityBinding, max_body_bytes=settings.max_body_bytes)
    else:
        log.warning(DEVELOPMENT_BANNER)
    observability.install(app)  # last: /metrics, /readyz and the outermost request log
    if app.state.wakeup is not None:
        app.state.metrics.long_polls_waiting.set_function(lambda: app.state.wakeup.waiting)
    return app


def _ledger_has_entries(engine: Engine) -> bool:
    with engine.connect() as conn:
        return conn.execute(text("SELECT 1 FROM ledger_entries LIMIT 1")).first() is not None


DEVELOPMENT_BANNER = (
    "DEVELOPMENT MODE: plain HTTP, no client certificates; silos are authenticated by their "
    "request signatures only. Keep it on 127.0.0.1; production runs "
    "`fedsilo aggregator serve --production --tls-cert ... --tls-key ... --client-ca ...`."
)
