"""`fedsilo aggregator serve`: start the aggregation service, with its production options."""

from __future__ import annotations

import errno
import socket
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from aggregation.service.settings import ServiceSettings
from flows.cli.common import console, fail
from flows.cli.errors import DATABASE_AT

if TYPE_CHECKING:
    from pydantic import ValidationError

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
    port: Annotated[int, typer.Option(min=1, max=65535, help="TCP port.")] = 8700,
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
        raise fail(settings_error(exc)) from exc
    serve_service(settings)


# a setting whose option has another name than the field
OPTION_OF = {"max_body_bytes": "--max-body-mb"}


def settings_error(exc: ValidationError) -> str:
    """The first invalid setting, named by its option: "--max-body-mb: Input should be ..."."""
    error = exc.errors()[0]
    field = str(error["loc"][0]) if error["loc"] else ""
    if not field:  # a check across settings: its message names the options
        return str(error["msg"]).removeprefix("Value error, ")
    return f"{OPTION_OF.get(field, '--' + field.replace('_', '-'))}: {error['msg']}"


def check_inputs(settings: ServiceSettings) -> None:
    """Refuse a database URL or admin token file the service cannot use, by its option."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    if settings.database_url:
        try:  # the dialect and its driver; never print the URL: it may hold a password
            make_url(settings.database_url).get_dialect().import_dbapi()
        except ArgumentError as exc:  # a malformed URL, or no such dialect
            raise fail(f"--database-url: {exc} (e.g. postgresql+psycopg://user@host/db)") from exc
        except ImportError as exc:
            raise fail(f"--database-url: its driver is not installed ({exc})") from exc
    if settings.admin_token_file is not None:
        try:
            settings.resolved_admin_token()
        except OSError as exc:
            why = exc.strerror or exc
            raise fail(f"--admin-token-file {settings.admin_token_file}: {why}") from exc
        except ValueError as exc:  # an empty file
            raise fail(f"--admin-token-file: {exc}") from exc


def listen(host: str, port: int) -> socket.socket:
    """The service's listening socket (uvicorn's own recipe, `Config.bind_socket`), bound
    before anything is written: a busy port ends the start here, not after a workspace and a
    new admin token were made."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # restart over TIME_WAIT
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise fail(_bind_error(host, port, exc)) from exc
    return sock


def _bind_error(host: str, port: int, exc: OSError) -> str:
    where = f"{host}:{port}"
    if exc.errno == errno.EADDRINUSE:
        return f"{where} is already in use (another service?): stop it or choose another --port"
    if exc.errno == errno.EACCES:
        return f"cannot listen on {where}: permission denied; choose a --port from 1024 up"
    why = exc.strerror or str(exc)
    return f"cannot listen on {where}: {why}; --host must be an address of this machine"


def check_workspace(workspace: Path) -> None:
    """Create the workspace and write in it once: a file in the way or a read-only folder is
    named here, before the database, keys and admin token go there."""
    try:
        workspace.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=workspace):
            pass
    except OSError as exc:
        raise fail(f"--workspace {workspace}: cannot write there ({exc.strerror})") from exc


@contextmanager
def naming_database(url: str) -> Iterator[None]:
    """Tag a database error raised inside with the URL's host:port (never its password), for
    `errors.describe`: a connect timeout's message names no server."""
    try:
        yield
    except Exception as exc:
        from sqlalchemy.engine import make_url

        parsed = make_url(url)
        if parsed.get_backend_name() != "sqlite" and parsed.host:
            at = f"{parsed.host}:{parsed.port or 5432}"
            setattr(exc, DATABASE_AT, at)
        raise


def serve_service(settings: ServiceSettings) -> None:
    """Run the service with uvicorn until interrupted; say loudly which mode it is in."""
    from aggregation.service.db import owner_only_umask
    from aggregation.service.main import DEVELOPMENT_BANNER, create_app
    from aggregation.service.observability import configure_logging
    from aggregation.service.server import Server
    from aggregation.service.tls import uvicorn_config

    check_inputs(settings)
    sock = listen(settings.host, settings.port)
    try:
        owner_only_umask()  # every file the service writes: 0600, folders 0700
        check_workspace(settings.workspace)
        configure_logging(settings.resolved_log_format(), settings.log_level)
        with naming_database(settings.resolved_database_url()):
            application = create_app(settings)
    except Exception:  # refused before serving: free the port (an interrupt ends the process)
        sock.close()
        raise
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
    # its shutdown answers long-polls first; it serves on the socket bound above
    Server(config, application.state.wakeup).run(sockets=[sock])
