"""`fedsilo aggregator serve`: start the aggregation service, with its production options."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from aggregation.service.settings import ServiceSettings
from flows.cli.common import console, fail

aggregator_app = typer.Typer(
    help="Run the aggregation service (the federation's hub).", no_args_is_help=True
)

ProductionOpt = Annotated[
    bool,
    typer.Option(
        "--production",
        envvar="FEDSILO_SERVICE_PRODUCTION",
        help="HTTPS only, with client certificates from --client-ca (mutual TLS); needs "
        "--tls-cert, --tls-key and --client-ca. Without it: development mode, plain HTTP.",
    ),
]
TlsCertOpt = Annotated[
    Path | None,
    typer.Option(envvar="FEDSILO_SERVICE_TLS_CERT", help="The service's certificate (PEM)."),
]
TlsKeyOpt = Annotated[
    Path | None,
    typer.Option(envvar="FEDSILO_SERVICE_TLS_KEY", help="The service's private key (PEM)."),
]
ClientCaOpt = Annotated[
    Path | None,
    typer.Option(
        envvar="FEDSILO_SERVICE_CLIENT_CA",
        help="The federation CA: only clients with a certificate it signed may connect.",
    ),
]
ExposeDocsOpt = Annotated[
    bool,
    typer.Option(
        "--expose-docs",
        envvar="FEDSILO_SERVICE_EXPOSE_DOCS",
        help="Serve /docs, /redoc and /openapi.json in production mode too (development mode "
        "always does). Off by default: the schema maps every route for whoever connects.",
    ),
]
AdminTokenFileOpt = Annotated[
    Path | None,
    typer.Option(
        envvar="FEDSILO_SERVICE_ADMIN_TOKEN_FILE",
        help="File with the coordinator's admin token; default WORKSPACE/admin.token.",
    ),
]


@aggregator_app.command("serve")
def aggregator_serve(
    workspace: Annotated[
        Path, typer.Option(help="Service folder: SQLite database, admin token.")
    ] = Path("fedsilo-service"),
    host: Annotated[
        str,
        typer.Option(
            help="Interface to bind; keep 127.0.0.1 in development mode (plain HTTP); "
            "--production (mutual TLS) may listen on other interfaces."
        ),
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.")] = 8700,
    database_url: Annotated[
        str,
        typer.Option(
            envvar="FEDSILO_SERVICE_DATABASE_URL",
            help="SQLAlchemy URL (PostgreSQL in production); empty = SQLite in the workspace.",
        ),
    ] = "",
    max_body_mb: Annotated[float, typer.Option(help="Largest request body accepted, MiB.")] = 64.0,
    production: ProductionOpt = False,
    tls_cert: TlsCertOpt = None,
    tls_key: TlsKeyOpt = None,
    client_ca: ClientCaOpt = None,
    admin_token_file: AdminTokenFileOpt = None,
    expose_docs: ExposeDocsOpt = False,
    log_format: Annotated[
        str | None,
        typer.Option(
            envvar="FEDSILO_SERVICE_LOG_FORMAT",
            help="Log lines as 'json' (one object per line: request id, route, status, "
            "duration, caller) or 'text'. Default: json with --production, else text.",
        ),
    ] = None,
) -> None:
    """Start the aggregation service. All state is in its database: stop or kill it at any
    time and start it again to carry on."""
    from pydantic import ValidationError

    try:
        settings = ServiceSettings(
            workspace=workspace,
            host=host,
            port=port,
            database_url=database_url,
            max_body_bytes=int(max_body_mb * 1024 * 1024),
            mode="production" if production else "development",
            tls_cert=tls_cert,
            tls_key=tls_key,
            client_ca=client_ca,
            admin_token_file=admin_token_file,
            expose_docs=True if expose_docs else None,
            log_format=log_format,  # type: ignore[arg-type]  # pydantic names json|text
        )
    except ValidationError as exc:
        raise fail(exc.errors()[0]["msg"]) from exc
    serve_service(settings)


def serve_service(settings: ServiceSettings) -> None:
    """Run the service with uvicorn until interrupted; say loudly which mode it is in."""
    from aggregation.service.db import owner_only_umask
    from aggregation.service.main import DEVELOPMENT_BANNER, create_app
    from aggregation.service.observability import configure_logging
    from aggregation.service.server import Server
    from aggregation.service.tls import uvicorn_config

    owner_only_umask()  # every file the service writes: 0600, folders 0700
    configure_logging(settings.resolved_log_format(), settings.log_level)
    application = create_app(settings)
    database = settings.resolved_database_url().split("@")[-1]
    if settings.mode == "production":
        console.print(
            f"aggregation service (production) on https://{settings.host}:{settings.port}: "
            f"mutual TLS, client certificates from {settings.client_ca}; plain HTTP connections "
            f"are refused (database {database})"
        )
    else:
        console.print(f"[bold red]{DEVELOPMENT_BANNER}[/bold red]")
        token_at = settings.admin_token_file or settings.workspace / "admin.token"
        console.print(
            f"aggregation service on http://{settings.host}:{settings.port} (database "
            f"{database}); admin token in {token_at}"
        )
    # log_config None: uvicorn keeps the handlers configure_logging gave its loggers
    config = uvicorn_config(application, settings, log_config=None)
    Server(config, application.state.wakeup).run()  # its shutdown answers long-polls first
