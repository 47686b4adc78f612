"""`fedsilo aggregator serve`'s production options and the start-up itself."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from aggregation.service.settings import ServiceSettings
from flows.cli_common import console

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
AdminTokenFileOpt = Annotated[
    Path | None,
    typer.Option(
        envvar="FEDSILO_SERVICE_ADMIN_TOKEN_FILE",
        help="File with the coordinator's admin token; default WORKSPACE/admin.token.",
    ),
]


def serve_service(settings: ServiceSettings) -> None:
    """Run the service with uvicorn until interrupted; say loudly which mode it is in."""
    import uvicorn

    from aggregation.service.main import DEVELOPMENT_BANNER, create_app
    from aggregation.service.tls import uvicorn_config

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
    uvicorn.Server(uvicorn_config(application, settings)).run()
