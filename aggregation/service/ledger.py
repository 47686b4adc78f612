"""The lineage ledger table and the one way to write it: `append`.

Entries are append-only (see `ledger_guard` for the triggers), hash-chained and signed; the
hashing and signing rules live in `schemas.lineage` so that exports and silo copies verify
without this module.

Concurrency: two writers must never both build on the same head and fork the chain. The
``ledger_head`` row (seq, entry_hash of the last entry) is the writers' lock and every append
moves it in the same transaction as its insert:

* The insert is guarded: it happens only if the head row still holds the predecessor the new
  entry was hashed and signed on (``UPDATE ledger_head ... WHERE seq = :prev_seq AND
  entry_hash = :prev_hash``, then the INSERT; one statement on PostgreSQL, a data-modifying
  CTE). The UPDATE takes the head row's lock (PostgreSQL) or SQLite's single write lock, and
  the guard is evaluated on the latest committed head, so a stale guess inserts nothing.
* Fast path: each engine remembers the head it last wrote and first tries to append right
  after it: one statement (PostgreSQL) when no other writer came in between.
* Otherwise, lock then read: ``UPDATE ledger_head SET seq = seq ... RETURNING`` waits for the
  row lock (PostgreSQL) or write lock (SQLite) and returns the current head; the entry is
  sealed on it and inserted with the same guard, which now cannot fail. Only the very first
  append on a database, which has to create the head row, also takes
  ``pg_advisory_xact_lock(LEDGER_LOCK_KEY)`` on PostgreSQL (there is no row to lock yet).
* PostgreSQL needs READ COMMITTED (its default) for the UPDATE to see the head committed
  while it waited; under REPEATABLE READ it fails with a serialization error (never forks).
* SQLite takes its write lock at the first write statement (the guarded UPDATE), exactly like
  ``BEGIN IMMEDIATE``. This relies on the caller's transaction not having read the database
  before writing (pysqlite opens its transaction lazily at the first write, so earlier reads
  run outside it); a transaction that read first and then appends may fail with "database is
  locked" instead of forking, and should simply be retried.

Independently of the locks, ``seq`` is the primary key and ``prev_hash`` is unique, so the
database itself refuses a second entry on the same predecessor.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterator, Mapping
from typing import Any, cast

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from sqlalchemy import Connection, Engine, Integer, String, Table, Text, insert, select
from sqlalchemy.orm import Mapped, Session, mapped_column

from aggregation.service.db import Base
from schemas.lineage import (
    GENESIS_HASH,
    KINDS,
    SERVICE_AUTHOR,
    CanonicalJsonError,
    EntrySigner,
    LineageEntry,
    LineageError,
    Receipt,
    Statement,
    make_receipt,
    make_statement,
    seal_entry,
    utc_now_iso,
    verify_signature,
)

# "fedsilo" as a big-endian integer: a fixed key that no other advisory lock user will pick.
LEDGER_LOCK_KEY = int.from_bytes(b"fedsilo", "big")


class LedgerAppendError(LineageError):
    """An entry was refused: unknown kind, bad author, missing or invalid silo signature."""


class LedgerEntry(Base):
    """One row of the append-only ledger (column meanings in `schemas.lineage`)."""

    __tablename__ = "ledger_entries"

    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    run_id: Mapped[str | None] = mapped_column(String(128), index=True)
    kind: Mapped[str] = mapped_column(String(64), index=True)
    payload: Mapped[str] = mapped_column(Text)
    prev_hash: Mapped[str] = mapped_column(String(64), unique=True)
    entry_hash: Mapped[str] = mapped_column(String(64), unique=True)
    author: Mapped[str] = mapped_column(String(80), index=True)
    author_signature: Mapped[str | None] = mapped_column(String(128))
    service_signature: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[str] = mapped_column(String(32))

    def to_record(self) -> LineageEntry:
        """The entry as the shared, exportable model."""
        return LineageEntry(
            seq=self.seq,
            run_id=self.run_id,
            kind=self.kind,
            payload=self.payload,
            prev_hash=self.prev_hash,
            entry_hash=self.entry_hash,
            author=self.author,
            author_signature=self.author_signature,
            service_signature=self.service_signature,
            created_at=self.created_at,
        )


class LedgerHead(Base):
    """The writers' lock row and the head of the chain, rewritten by every append.

    If it were ever stale, the next insert would collide on ``seq`` or ``prev_hash`` and fail
    rather than fork the chain.
    """

    __tablename__ = "ledger_head"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    seq: Mapped[int] = mapped_column(Integer)
    entry_hash: Mapped[str] = mapped_column(String(64))


ENTRIES_TABLE = cast(Table, LedgerEntry.__table__)
HEAD_TABLE = cast(Table, LedgerHead.__table__)
# The tables the migration must create (then call `ledger_guard.install`).
metadata_tables: tuple[Table, ...] = (ENTRIES_TABLE, HEAD_TABLE)


_LOCK_HEAD = "UPDATE ledger_head SET seq = seq WHERE id = 1 RETURNING seq, entry_hash"
_ADVISORY_LOCK = f"SELECT pg_advisory_xact_lock({LEDGER_LOCK_KEY})"
_COLUMNS = (
    "seq",
    "run_id",
    "kind",
    "payload",
    "prev_hash",
    "entry_hash",
    "author",
    "author_signature",
    "service_signature",
    "created_at",
)


def _append_sql(mark: str) -> tuple[str, str]:
    """The guarded head move and the entry insert, with placeholders spelt ``mark % name``."""
    move = (
        f"UPDATE ledger_head SET seq = {mark % 'seq'}, entry_hash = {mark % 'entry_hash'} "
        f"WHERE id = 1 AND seq = {mark % 'prev_seq'} AND entry_hash = {mark % 'prev_hash'}"
    )
    values = ", ".join(mark % column for column in _COLUMNS)
    return move, f"INSERT INTO ledger_entries ({', '.join(_COLUMNS)}) SELECT {values}"


# Driver-level SQL (exec_driver_sql): appending is the service's hottest write path, and
# skipping SQLAlchemy's statement compilation and the ORM keeps its cost down to the driver.
# SQLite: two statements (the UPDATE is the write lock); its rowcount says whether to insert.
_SQLITE_MOVE, _SQLITE_INSERT = _append_sql(":%s")
# PostgreSQL: one statement, one round trip; the INSERT selects from the moved head row, so it
# inserts exactly when the guard held (the UPDATE waits for the row lock, then rechecks it).
_PG_MOVE, _PG_INSERT = _append_sql("%%(%s)s")
_PG_APPEND = f"WITH moved AS ({_PG_MOVE} RETURNING id) {_PG_INSERT} FROM moved"

# The head each engine last wrote, (seq, entry_hash): only a guess to try first. A wrong guess
# (another writer, a rolled-back transaction) inserts nothing and costs one statement.
_LAST_HEAD: weakref.WeakKeyDictionary[Engine, tuple[int, str]] = weakref.WeakKeyDictionary()


def _lock_and_read_head(connection: Connection) -> tuple[int, str]:
    """Serialise appenders for the rest of the transaction, then read the head (docstring)."""
    row = connection.exec_driver_sql(_LOCK_HEAD).first()
    if row is None and connection.dialect.name == "postgresql":
        # No head row to lock yet (first append): serialise its creation, then look again
        # (a new statement sees what a writer that held the lock committed).
        connection.exec_driver_sql(_ADVISORY_LOCK)
        row = connection.exec_driver_sql(_LOCK_HEAD).first()
    if row is not None:
        return row[0], row[1]
    # First append on this database: SQLite already holds the write lock (taken at the first
    # write statement, matched rows or not), PostgreSQL the advisory lock.
    last = connection.execute(
        select(LedgerEntry.seq, LedgerEntry.entry_hash).order_by(LedgerEntry.seq.desc()).limit(1)
    ).first()
    seq, entry_hash = (last[0], last[1]) if last is not None else (0, GENESIS_HASH)
    connection.execute(insert(HEAD_TABLE), {"id": 1, "seq": seq, "entry_hash": entry_hash})
    return seq, entry_hash


def _append_at(connection: Connection, record: LineageEntry) -> bool:
    """Insert `record` and move the head onto it, if the head is still its predecessor."""
    params = record.model_dump()
    params["prev_seq"] = record.seq - 1
    if connection.dialect.name == "postgresql":
        return connection.exec_driver_sql(_PG_APPEND, params).rowcount == 1
    if connection.exec_driver_sql(_SQLITE_MOVE, params).rowcount != 1:
        return False
    connection.exec_driver_sql(_SQLITE_INSERT, params)
    return True


def _check_author_signature(
    author: str, kind: str, signature: str | None, key: Ed25519PublicKey | None, msg: bytes
) -> None:
    if author == SERVICE_AUTHOR:
        if signature is not None:
            raise LedgerAppendError(
                f"{kind} entry by the service: author_signature must be None (the service "
                "signature covers it)"
            )
        return
    if signature is None:
        raise LedgerAppendError(
            f"{kind} entry by {author}: the silo's author_signature over its statement is "
            "required; have the silo sign it with schemas.lineage.sign_statement"
        )
    if key is not None and not verify_signature(key, signature, msg):
        raise LedgerAppendError(
            f"{kind} entry by {author}: author_signature does not verify with {author}'s "
            "registered key; refusing to record it"
        )


def append(
    session: Session,
    *,
    kind: str,
    payload: Mapping[str, Any] | str,
    run_id: str | None,
    author: str,
    service_key: EntrySigner,
    author_signature: str | None = None,
    author_key: Ed25519PublicKey | None = None,
) -> LineageEntry:
    """Append one entry at the head of the ledger, inside the caller's transaction.

    Parameters
    ----------
    session
        A session inside a transaction (e.g. `db.transaction`); the entry is durable when
        that transaction commits, and writers are serialised until then.
    kind
        One of `schemas.lineage.KINDS`.
    payload
        A dict (canonicalised here) or the canonical JSON text a silo signed.
    run_id
        The training run, or None for federation-wide events.
    author
        ``"service"`` or ``"silo:<name>"``.
    service_key
        The service's Ed25519 key (or signer hook, `keys.load_service_signer`); it signs
        every entry hash.
    author_signature
        For silo authors: the silo's `sign_statement` signature (hex) over exactly this
        content; None for the service.
    author_key
        The silo's registered public key; when given, the signature is checked before the
        entry is written.

    Returns
    -------
    LineageEntry
        The new entry as written (hash, signatures, seq); `receipt` turns it into the silo's
        receipt.

    Raises
    ------
    LedgerAppendError
        Unknown kind, malformed author or payload, missing or invalid silo signature.
    """
    if kind not in KINDS:
        raise LedgerAppendError(
            f"unknown ledger kind {kind!r}; known kinds: {sorted(KINDS)} (add new kinds to "
            "schemas.lineage.KINDS)"
        )
    try:
        statement = make_statement(run_id=run_id, kind=kind, payload=_plain(payload), author=author)
    except (LineageError, CanonicalJsonError) as exc:
        raise LedgerAppendError(f"{kind} entry by {author}: {exc}") from exc
    _check_author_signature(author, kind, author_signature, author_key, statement.message())
    connection = session.connection()
    engine = connection.engine
    guess = _LAST_HEAD.get(engine)
    if guess is not None:
        record = _seal(statement, guess, service_key, author_signature)
        if _append_at(connection, record):
            _LAST_HEAD[engine] = (record.seq, record.entry_hash)
            return record
    record = _seal(statement, _lock_and_read_head(connection), service_key, author_signature)
    if not _append_at(connection, record):
        raise LedgerAppendError(
            f"{kind} entry by {author}: ledger_head moved while this transaction held its "
            "lock; is something writing ledger_head outside ledger.append?"
        )
    _LAST_HEAD[engine] = (record.seq, record.entry_hash)
    return record


def _seal(
    statement: Statement,
    head: tuple[int, str],
    service_key: EntrySigner,
    author_signature: str | None,
) -> LineageEntry:
    return seal_entry(
        statement,
        seq=head[0] + 1,
        prev_hash=head[1],
        created_at=utc_now_iso(),
        service_key=service_key,
        author_signature=author_signature,
    )


def _plain(payload: Mapping[str, Any] | str) -> dict[str, Any] | str:
    return payload if isinstance(payload, str) else dict(payload)


def head(session: Session) -> LineageEntry | None:
    """The last entry, or None for an empty ledger."""
    row = session.scalars(select(LedgerEntry).order_by(LedgerEntry.seq.desc()).limit(1)).first()
    return row.to_record() if row is not None else None


def records_after(
    session: Session, *, after: int = 0, run_id: str | None = None, limit: int = 10_000
) -> list[LineageEntry]:
    """Entries past seq `after`, in seq order; `run_id` keeps that run's entries only."""
    stmt = select(LedgerEntry).where(LedgerEntry.seq > after).order_by(LedgerEntry.seq)
    if run_id:
        stmt = stmt.where(LedgerEntry.run_id == run_id)
    return [row.to_record() for row in session.scalars(stmt.limit(limit))]


def iter_records(session: Session, *, batch: int = 5000) -> Iterator[LineageEntry]:
    """Every entry in seq order as `LineageEntry`, read in batches (for verify and export).

    Reads plain rows rather than ORM objects, so a 100k-entry ledger does not fill the
    session's identity map.
    """
    table = ENTRIES_TABLE
    after = 0
    while True:
        rows = session.execute(
            select(table).where(table.c.seq > after).order_by(table.c.seq).limit(batch)
        ).mappings()
        records = [LineageEntry.model_validate(dict(row)) for row in rows]
        if not records:
            return
        yield from records
        after = records[-1].seq


def receipt(entry: LedgerEntry | LineageEntry, service_key: EntrySigner) -> Receipt:
    """The service's signed receipt for `entry`, to hand back to the silo that authored it."""
    record = entry.to_record() if isinstance(entry, LedgerEntry) else entry
    return make_receipt(record, service_key)


def authored_by(
    session: Session,
    author: str,
    *,
    after: int = 0,
    limit: int = 500,
    run_id: str | None = None,
    kind: str | None = None,
) -> list[LineageEntry]:
    """`author`'s entries past seq `after`, in seq order, at most `limit` (a silo's own
    entries, for its copy of its lineage); `run_id` and `kind` narrow them."""
    stmt = (
        select(LedgerEntry)
        .where(LedgerEntry.author == author, LedgerEntry.seq > after)
        .order_by(LedgerEntry.seq)
    )
    if run_id is not None:
        stmt = stmt.where(LedgerEntry.run_id == run_id)
    if kind is not None:
        stmt = stmt.where(LedgerEntry.kind == kind)
    return [row.to_record() for row in session.scalars(stmt.limit(limit))]
