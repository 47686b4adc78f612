"""The database half of a hub backup: one consistent snapshot, and its restore.

SQLite is copied with the online backup API (one pass under one read lock, so writers that
commit meanwhile are simply not in the copy). PostgreSQL is read in one REPEATABLE READ
transaction whose snapshot is exported to ``pg_dump --snapshot``: the dump, the ledger head
and the model list in the manifest all describe the same instant, while the service runs.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, create_engine, inspect, make_url, text

from aggregation.service.db import connect_args, private_sqlite_file


class BackupError(ValueError):
    """A backup cannot be taken or restored; the message names the file or step and the fix."""


@dataclass(frozen=True)
class Snapshot:
    """What the manifest records about the database at the backup's instant."""

    backend: str
    revision: str | None
    head_seq: int
    head_hash: str | None
    models: list[dict[str, Any]]  # model_saved payloads: path, sha256, ...


def backend_of(url: str) -> str:
    return make_url(url).get_backend_name()


def sqlite_path(url: str) -> Path:
    database = make_url(url).database
    if not database or database == ":memory:":
        raise BackupError(f"cannot back up an in-memory SQLite database ({url})")
    return Path(database)


def _read_snapshot(conn: Connection, backend: str) -> Snapshot:
    names = set(inspect(conn).get_table_names())
    if "ledger_entries" not in names:
        raise BackupError("the database has no fedsilo tables: start the service once first")
    revision = conn.execute(text("SELECT version_num FROM alembic_version")).scalar()
    head = conn.execute(
        text("SELECT seq, entry_hash FROM ledger_entries ORDER BY seq DESC LIMIT 1")
    ).first()
    payloads = conn.execute(
        text("SELECT payload FROM ledger_entries WHERE kind = 'model_saved' ORDER BY seq")
    ).scalars()
    return Snapshot(
        backend=backend,
        revision=revision,
        head_seq=int(head[0]) if head else 0,
        head_hash=str(head[1]) if head else None,
        models=[json.loads(p) for p in payloads],
    )


def _libpq(url: str) -> tuple[str, dict[str, str]]:
    """A libpq URL for pg_dump/pg_restore, with the password in the environment (not argv)."""
    parsed = make_url(url)
    env = dict(os.environ)
    if parsed.password:
        env["PGPASSWORD"] = str(parsed.password)
    plain = parsed.set(drivername="postgresql", password=None)
    return plain.render_as_string(hide_password=False), env


def _run(args: list[str], env: dict[str, str], what: str) -> None:
    tool = shutil.which(args[0])
    if tool is None:
        raise BackupError(f"{what} needs {args[0]} (PostgreSQL client tools) on PATH")
    done = subprocess.run([tool, *args[1:]], env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise BackupError(f"{what}: {args[0]} failed: {done.stderr.strip()[-2000:]}")


def dump(url: str, target: Path) -> Snapshot:
    """Write the database to `target` (SQLite file or pg_dump custom archive) as of one
    instant, and return what the manifest says about that instant."""
    backend = backend_of(url)
    if backend == "sqlite":
        source = sqlite_path(url)
        if not source.is_file():
            raise BackupError(f"no SQLite database at {source}: is the workspace right?")
        src = sqlite3.connect(f"file:{source}?mode=ro", uri=True, timeout=30)
        dst = sqlite3.connect(target)
        try:
            src.backup(dst)  # pages=-1: the whole file in one step, one consistent read
            # a rollback journal, not WAL: reading the copy must not add -wal/-shm files
            dst.execute("PRAGMA journal_mode=DELETE")
        finally:
            src.close()
            dst.close()
        engine = create_engine(f"sqlite:///{target}")
        try:
            with engine.connect() as conn:
                return _read_snapshot(conn, backend)
        finally:
            engine.dispose()
    if backend != "postgresql":
        raise BackupError(f"backup supports SQLite and PostgreSQL, not {backend}")
    engine = create_engine(url, isolation_level="REPEATABLE READ", connect_args=connect_args(url))
    dsn, env = _libpq(url)
    try:
        with engine.connect() as conn, conn.begin():
            snapshot_id = conn.execute(text("SELECT pg_export_snapshot()")).scalar_one()
            snap = _read_snapshot(conn, backend)
            # pg_dump reads the exported snapshot, so it sees exactly what `snap` describes
            _run(
                ["pg_dump", "-Fc", "--snapshot", snapshot_id, "-f", str(target), "-d", dsn],
                env,
                "backup",
            )
        return snap
    finally:
        engine.dispose()


def is_empty(url: str) -> bool:
    """Whether the target database holds no fedsilo state (no file, or no ledger entries)."""
    if backend_of(url) == "sqlite" and not sqlite_path(url).exists():
        return True
    engine = create_engine(url, connect_args=connect_args(url))
    try:
        with engine.connect() as conn:
            if "ledger_entries" not in set(inspect(conn).get_table_names()):
                return True
            return conn.execute(text("SELECT count(*) FROM ledger_entries")).scalar_one() == 0
    finally:
        engine.dispose()


def load(url: str, source: Path) -> None:
    """Replace the database at `url` by the dump `source` (whatever it held before).

    PostgreSQL: in one transaction (psql --single-transaction, which rolls back on the first
    error), drop every table the database holds, then run the dump's SQL. Dropping first lets
    a backup of an older schema go onto a database a newer release migrated (``pg_restore
    --clean`` alone drops only the dump's own objects, and a newer table's foreign key on one
    of them blocks it). No CASCADE: an object of someone else's that depends on a table (a
    reporting view) fails the restore, naming it, and leaves the database as it was.
    """
    if backend_of(url) == "sqlite":
        path = sqlite_path(url)
        path.parent.mkdir(parents=True, exist_ok=True)
        for stale in (path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
            stale.unlink(missing_ok=True)  # a WAL from the old database must not replay
        tmp = path.with_name(path.name + ".restoring")
        shutil.copyfile(source, tmp)
        tmp.replace(path)
        private_sqlite_file(url)
        return
    dsn, env = _libpq(url)
    tools = {name: shutil.which(name) for name in ("pg_restore", "psql")}
    for name, found in tools.items():
        if found is None:
            raise BackupError(f"restore needs {name} (PostgreSQL client tools) on PATH")
    prelude = _drop_tables(url)
    script = [str(tools["pg_restore"]), "--clean", "--if-exists", "--no-owner", "-f", "-"]
    psql = [str(tools["psql"]), "-X", "-q", "--single-transaction", "-v", "ON_ERROR_STOP=1"]
    psql += ["-c", prelude] if prelude else []
    with subprocess.Popen(
        [*script, str(source)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    ) as dumper:
        loaded = subprocess.run(
            [*psql, "-f", "-", "-d", dsn],
            env=env,
            stdin=dumper.stdout,
            capture_output=True,
            text=True,
            check=False,
        )
        if dumper.stdout is not None:
            dumper.stdout.close()
        dump_err = dumper.stderr.read().decode(errors="replace") if dumper.stderr else ""
    if loaded.returncode != 0:  # first: pg_restore then only failed on the closed pipe
        said = " ".join(loaded.stderr.split())[-2000:]
        raise BackupError(f"restore: loading the database failed (rolled back): {said}")
    if dumper.returncode != 0:
        raise BackupError(f"restore: pg_restore failed: {dump_err.strip()[-2000:]}")


def _drop_tables(url: str) -> str:
    """DROP TABLE of every table in the target database's schema, one statement (so tables
    that refer to each other go together); empty when there is none."""
    engine = create_engine(url, connect_args=connect_args(url))
    try:
        with engine.connect() as conn:
            names = sorted(inspect(conn).get_table_names())
            quote = conn.dialect.identifier_preparer.quote
    finally:
        engine.dispose()
    return f"DROP TABLE {', '.join(quote(n) for n in names)}" if names else ""
