"""`fedsilo aggregator backup|restore|migrate`: the hub operator's maintenance commands.

They read the same settings as `aggregator serve` (options or FEDSILO_SERVICE_* variables),
so the backup names exactly the database, keys, TLS files and models the service uses.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any

import typer

from aggregation.service.settings import ServiceSettings
from flows.cli.common import fail
from flows.cli.output import say
from flows.cli.serve import (
    AdminTokenFileOpt,
    ClientCaOpt,
    TlsCertOpt,
    TlsKeyOpt,
    aggregator_app,
    check_workspace,
    naming_database,
)

WorkspaceOpt = Annotated[
    Path,
    typer.Option(
        envvar="FEDSILO_SERVICE_WORKSPACE",
        help="The service's folder: keys, admin token, models (SQLite database by default).",
    ),
]
DatabaseOpt = Annotated[
    str,
    typer.Option(
        envvar="FEDSILO_SERVICE_DATABASE_URL",
        help="SQLAlchemy URL the service uses; empty = SQLite in the workspace.",
    ),
]

SigningKeyFileOpt = Annotated[
    Path | None,
    typer.Option(
        envvar="FEDSILO_SERVICE_SIGNING_KEY_FILE",
        help="The service's ledger signing key (Ed25519 PEM) when it is kept outside the "
        "workspace; default WORKSPACE/keys.",
    ),
]


def _settings(workspace: Path, database_url: str, **files: Path | None) -> ServiceSettings:
    """The service's settings: the options given here (`files`: TLS, admin token and signing
    key files, as `aggregator serve` takes them) and FEDSILO_SERVICE_* for the rest."""
    from pydantic import ValidationError

    given: dict[str, Any] = {name: path for name, path in files.items() if path is not None}
    try:
        return ServiceSettings(workspace=workspace, database_url=database_url, **given)
    except ValidationError as exc:
        raise fail(exc.errors()[0]["msg"]) from exc


def _warn(text: str) -> None:
    from flows.cli.errors import err_console

    err_console.print(f"warning: {text}", markup=False, soft_wrap=True)


@aggregator_app.command("backup")
def aggregator_backup(
    out: Annotated[Path, typer.Option("--out", help="New, empty folder for the backup.")],
    workspace: WorkspaceOpt = Path("fedsilo-service"),
    database_url: DatabaseOpt = "",
    tls_cert: TlsCertOpt = None,
    tls_key: TlsKeyOpt = None,
    client_ca: ClientCaOpt = None,
    admin_token_file: AdminTokenFileOpt = None,
    signing_key_file: SigningKeyFileOpt = None,
) -> None:
    """Back up the database (one consistent snapshot), keys, TLS files and models while the
    service runs; the manifest records every file's sha256 and the ledger head. Give it the
    options (or FEDSILO_SERVICE_* variables) `aggregator serve` runs with: the admin token and
    TLS files kept outside the workspace are backed up only when named."""
    from aggregation.backup import BackupError, backup

    settings = _settings(
        workspace,
        database_url,
        tls_cert=tls_cert,
        tls_key=tls_key,
        client_ca=client_ca,
        admin_token_file=admin_token_file,
        signing_key_file=signing_key_file,
    )
    try:
        manifest = backup(settings, out)
    except BackupError as exc:
        raise fail(str(exc)) from exc
    if settings.admin_token_file is None and not (settings.workspace / "admin.token").is_file():
        _warn(
            f"the backup holds no admin token: {settings.workspace} has no admin.token and no "
            "--admin-token-file (FEDSILO_SERVICE_ADMIN_TOKEN_FILE) was given; if the service "
            "runs with one, take the backup again giving it (and its --tls-* files)"
        )
    head = manifest["ledger_head"]
    say(
        f"backup {out}: {len(manifest['files'])} files, schema "
        f"{manifest['database']['schema_revision']}, "
        f"ledger head {head['seq']} {str(head['entry_hash'])[:16]}",
    )


@aggregator_app.command("restore")
def aggregator_restore(
    folder: Annotated[Path, typer.Argument(help="A folder written by `aggregator backup`.")],
    workspace: WorkspaceOpt = Path("fedsilo-service"),
    database_url: DatabaseOpt = "",
    signing_key_file: SigningKeyFileOpt = None,
    force: Annotated[
        bool, typer.Option("--force", help="Replace a database or workspace that holds state.")
    ] = False,
) -> None:
    """Restore a backup (service stopped): check every file against the manifest, put the
    database, keys, TLS files and models back, then verify the restored ledger (as `lineage
    verify`). An open secure-aggregation round starts its protocol again (advertise)."""
    from aggregation.backup import BackupError, restore

    notes: list[str] = []
    settings = _settings(workspace, database_url, signing_key_file=signing_key_file)
    try:
        report = restore(settings, folder, force=force, notes=notes)
    except BackupError as exc:
        raise fail(str(exc)) from exc
    for note in notes:
        say(note)
    say(
        f"restored {folder} into {workspace}: {report}; start the service with "
        "`fedsilo aggregator serve` (same options)",
    )


@aggregator_app.command("migrate")
def aggregator_migrate(
    workspace: WorkspaceOpt = Path("fedsilo-service"),
    database_url: DatabaseOpt = "",
) -> None:
    """Bring the database to this release's schema (the service also does it at start);
    run it after `aggregator backup`, with the service stopped."""
    from alembic.runtime.migration import MigrationContext

    from aggregation.service import migrate
    from aggregation.service.db import make_engine

    settings = _settings(workspace, database_url)
    if not settings.database_url:  # SQLite in the workspace: made as `aggregator serve` does
        from aggregation.service.db import owner_only_umask

        previous = owner_only_umask()
        try:
            check_workspace(settings.workspace)
        finally:
            os.umask(previous)
    engine = make_engine(settings.resolved_database_url())
    try:
        with naming_database(settings.resolved_database_url()):
            with engine.connect() as conn:
                before = MigrationContext.configure(conn).get_current_revision()
            migrate.upgrade(engine)
            with engine.connect() as conn:
                after = MigrationContext.configure(conn).get_current_revision()
    finally:
        engine.dispose()
    say(f"database schema {before or 'empty'} -> {after}")
