"""Database engine and sessions for the aggregation service.

SQLite (a file in the service workspace) by default, PostgreSQL by URL. All federation state
lives here, so the service can be killed at any moment and restarted. The SQLite file (and
its -wal and -shm companions, which SQLite creates with the database's mode) is its owner's
only: 0600, whatever the process's umask.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import Engine, create_engine, event, inspect, make_url, text
from sqlalchemy.exc import DBAPIError, DisconnectionError
from sqlalchemy.orm import DeclarativeBase, Session, sessionmaker


class Base(DeclarativeBase):
    """Declarative base of every table the service owns."""


OWNER_ONLY_UMASK = 0o077


def owner_only_umask() -> int:
    """Make every file the service process creates 0600 and every folder 0700 (its workspace,
    keys, lineage files, models); returns the previous umask."""
    return os.umask(OWNER_ONLY_UMASK)


def private_sqlite_file(url: str) -> None:
    """Create the SQLite database file of `url` as 0600 (or tighten an existing one and its
    -wal/-shm files); nothing for an in-memory database or another backend."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        return
    path = Path(parsed.database)
    if not path.parent.is_dir():
        return  # SQLite will refuse the URL itself, with its own message
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600))
    for companion in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
        if companion.exists():
            os.chmod(companion, 0o600)


CONNECT_TIMEOUT_S = 10.0  # a silent database host fails a start or a request, never hangs it
IDLE_PING_S = 1.0  # a pooled connection idle this long is checked before it is handed out:
# under load connections come back within it (no round trip added), a quiet hub pays one


def connect_args(url: str, connect_timeout_s: float = CONNECT_TIMEOUT_S) -> dict[str, object]:
    """libpq options for PostgreSQL: a connect timeout (libpq counts whole seconds, at least 2);
    nothing for other backends."""
    if make_url(url).get_backend_name() != "postgresql" or connect_timeout_s <= 0:
        return {}
    return {"connect_timeout": max(2, math.ceil(connect_timeout_s))}


def make_engine(
    url: str,
    *,
    connect_timeout_s: float = CONNECT_TIMEOUT_S,
    statement_timeout_s: float = 0.0,
) -> Engine:
    """Create an engine; SQLite gets WAL, foreign keys and a busy timeout for concurrent use;
    PostgreSQL a connect timeout (and a statement timeout when given, seconds; 0 = none)."""
    if url.startswith("sqlite"):
        private_sqlite_file(url)
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn, _record):  # type: ignore[no-untyped-def]
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.close()

        event.listen(engine, "before_execute", _sqlite_for_update)
        return engine
    args = connect_args(url, connect_timeout_s)
    if statement_timeout_s > 0 and make_url(url).get_backend_name() == "postgresql":
        args["options"] = f"-c statement_timeout={math.ceil(statement_timeout_s * 1000)}"
    # No pool_pre_ping on every checkout: it costs a round trip per request (the ledger's append
    # rate needs that back). Only a connection idle for IDLE_PING_S is checked (`_ping_if_idle`),
    # so one broken by a PostgreSQL restart while the hub was quiet is replaced, not handed to a
    # request. One broken while in use fails its request with a 503 (`wire`), SQLAlchemy then
    # invalidates the pool, and every fedsilo client retries 5xx answers.
    # Connections beyond pool_size are closed when returned, so a burst of long-polls woken at
    # once (every silo when a stage closes) used to open and close ~20 connections each time:
    # at 64 silos that churn was most of PostgreSQL's CPU (bench/scale.py: 16 -> 6 s a round).
    # 30 kept open covers the bursts; 40 in all covers the worker threads that run the sync
    # handlers and long-poll checks (settings.worker_threads, 8 by default; anyio's 40 before)
    # and the ops port's probes. Connections open on demand, so the default uses about 10. Two
    # replicas and Prefect's server stay under PostgreSQL's default max_connections of 100.
    engine = create_engine(url, pool_size=30, max_overflow=10, connect_args=args)
    event.listen(engine, "checkin", _stamp_checkin)
    event.listen(engine, "checkout", _ping_if_idle)
    return engine


IDLE_SINCE_KEY = "fedsilo_idle_since"


def _stamp_checkin(_dbapi_conn, record) -> None:  # type: ignore[no-untyped-def]
    record.info[IDLE_SINCE_KEY] = time.monotonic()


def _ping_if_idle(dbapi_conn, record, _proxy) -> None:  # type: ignore[no-untyped-def]
    """Check a connection that sat idle in the pool; DisconnectionError makes the pool drop it
    and hand out a fresh one (SQLAlchemy's own recipe for pessimistic disconnect handling)."""
    since = record.info.get(IDLE_SINCE_KEY)
    if since is None or time.monotonic() - since < IDLE_PING_S:
        return
    try:
        cursor = dbapi_conn.cursor()
        try:
            cursor.execute("SELECT 1")
        finally:
            cursor.close()
        dbapi_conn.rollback()  # leave no transaction open: the checkout's user begins its own
    except Exception as exc:
        raise DisconnectionError(f"pooled connection is gone: {exc}") from exc


def _sqlite_for_update(conn, clauseelement, *_args):  # type: ignore[no-untyped-def]
    """SQLite has no ``SELECT ... FOR UPDATE``: SQLAlchemy drops the clause, and pysqlite
    runs a SELECT outside any transaction until the first write. Two requests could then
    both read a row, each miss the other's change and both write (two parties' reports that
    should end a run each saw only its own). So a FOR UPDATE select that opens a transaction
    opens it with ``BEGIN IMMEDIATE``: it takes SQLite's single write lock, and waits (busy
    timeout) while another transaction holds it. A transaction that already wrote holds that
    lock since its first write."""
    if getattr(clauseelement, "_for_update_arg", None) is None:
        return
    dbapi_conn = conn.connection.dbapi_connection
    if not dbapi_conn.in_transaction:
        dbapi_conn.execute("BEGIN IMMEDIATE")


def make_sessionmaker(engine: Engine) -> sessionmaker[Session]:
    factory = sessionmaker(engine, expire_on_commit=False)
    event.listen(factory, "loaded_as_persistent", _hold_if_marked)
    return factory


HELD_KEY = "fedsilo_held_rows"


def _hold_if_marked(session: Session, instance: object) -> None:
    """Keep a loaded row of a table marked ``__held_in_session__`` (run, round, membership)
    for the session's life. The identity map holds rows weakly: once the code that read
    one let go of it, the next ``Session.get`` of the same row queried again (a task poll
    read the run and the round twice each, `tasks.with_inbox`)."""
    if getattr(instance, "__held_in_session__", False):
        session.info.setdefault(HELD_KEY, []).append(instance)


@contextmanager
def transaction(factory: sessionmaker[Session]) -> Iterator[Session]:
    """One unit of work: commit on success, roll back on any error."""
    with factory() as session, session.begin():
        yield session


class DatabaseNotWritable(RuntimeError):
    """The service's database role may read but not write (a read-only role or standby)."""


def require_writable(engine: Engine) -> None:
    """Insert nothing into every table, in a transaction rolled back: a role without INSERT
    or a read-only database fails here, at start, rather than every write later (with a 500)
    while /readyz, which only reads, says ready."""
    with engine.connect() as conn:
        names = sorted(t for t in inspect(conn).get_table_names() if t != "alembic_version")
        quote = conn.dialect.identifier_preparer.quote
        conn.rollback()  # end the transaction inspect began
        with conn.begin() as trans:
            for name in names:
                table = quote(name)
                try:
                    conn.execute(text(f"INSERT INTO {table} SELECT * FROM {table} WHERE 1 = 0"))
                except DBAPIError as exc:
                    reason = (str(exc.orig).strip().splitlines() or [""])[0]
                    code = str(getattr(exc.orig, "sqlstate", "") or "")
                    if code not in ("42501", "25006") and "readonly" not in reason:
                        raise  # not a permission problem: let the caller see it as it is
                    raise DatabaseNotWritable(
                        f"the database refuses the service's writes ({reason}; table {name}): "
                        "the service needs SELECT, INSERT, UPDATE and DELETE on its tables "
                        "(only SELECT, INSERT on ledger_entries) and a read-write primary, "
                        "not a standby; fix the role's grants or --database-url"
                    ) from exc
            trans.rollback()
