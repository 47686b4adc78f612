"""`fedsilo aggregator backup|restore|migrate`: the hub operator's maintenance commands.

They read the same settings as `aggregator serve` (options or FEDSILO_SERVICE_* variables),
so the backup names exactly the database, keys, TLS files and models the service uses.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from aggregation.service.settings import ServiceSettings
from flows.cli.common import fail
from flows.cli.output import say
from flows.cli.serve import aggregator_app

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


def _settings(workspace: Path, database_url: str) -> ServiceSettings:
    """The service's settings; TLS and signing-key files come from FEDSILO_SERVICE_* too."""
    from pydantic import ValidationError

    try:
        return ServiceSettings(workspace=workspace, database_url=database_url)
    except ValidationError as exc:
        raise fail(exc.errors()[0]["msg"]) from exc


@aggregator_app.command("backup")
def aggregator_backup(
    out: Annotated[Path, typer.Option("--out", help="New, empty folder for the backup.")],
    workspace: WorkspaceOpt = Path("fedsilo-service"),
    database_url: DatabaseOpt = "",
) -> None:
    """Back up the database (one consistent snapshot), keys, TLS files and models while the
    service runs; the manifest records every file's sha256 and the ledger head."""
    from aggregation.backup import BackupError, backup

    try:
        manifest = backup(_settings(workspace, database_url), out)
    except BackupError as exc:
        raise fail(str(exc)) from exc
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
    force: Annotated[
        bool, typer.Option("--force", help="Replace a database or workspace that holds state.")
    ] = False,
) -> None:
    """Restore a backup (service stopped): check every file against the manifest, put the
    database, keys and models back, then verify the restored ledger (as `lineage verify`)."""
    from aggregation.backup import BackupError, restore

    try:
        report = restore(_settings(workspace, database_url), folder, force=force)
    except BackupError as exc:
        raise fail(str(exc)) from exc
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

    engine = make_engine(_settings(workspace, database_url).resolved_database_url())
    try:
        with engine.connect() as conn:
            before = MigrationContext.configure(conn).get_current_revision()
        migrate.upgrade(engine)
        with engine.connect() as conn:
            after = MigrationContext.configure(conn).get_current_revision()
    finally:
        engine.dispose()
    say(f"database schema {before or 'empty'} -> {after}")
