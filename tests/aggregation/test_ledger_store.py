"""The ledger in the service database: append, refusals, append-only guard, concurrent writers.

Runs on SQLite and PostgreSQL (``db_url``).
"""

from __future__ import annotations

import multiprocessing
import threading
from collections.abc import Iterator

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import Engine, text
from sqlalchemy.exc import DBAPIError

from aggregation.service import ledger, ledger_guard
from aggregation.service.db import Base, make_engine, make_sessionmaker, transaction
from schemas.ledger_verify import verify_chain
from schemas.lineage import make_statement, sign_statement, verify_receipt

SERVICE = Ed25519PrivateKey.generate()
SILO = Ed25519PrivateKey.generate()
KEYS = {"service": SERVICE.public_key(), "silo:hungary": SILO.public_key()}


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    engine = make_engine(db_url)
    Base.metadata.create_all(engine, tables=list(ledger.metadata_tables))
    with engine.begin() as conn:
        ledger_guard.install(conn)
        ledger_guard.install(conn)  # idempotent: the migration may run it again
    yield engine
    engine.dispose()


def _records(engine: Engine) -> list:
    with make_sessionmaker(engine)() as session:
        return list(ledger.iter_records(session, batch=7))


def _append_service(engine: Engine, i: int, run_id: str = "run-1") -> None:
    with transaction(make_sessionmaker(engine)) as session:
        ledger.append(
            session,
            kind="metrics",
            payload={"i": i, "auc": 0.5 + i / 1000},
            run_id=run_id,
            author="service",
            service_key=SERVICE,
        )


def test_append_builds_a_verifiable_chain_and_receipts(engine: Engine) -> None:
    factory = make_sessionmaker(engine)
    statement = make_statement(
        run_id="run-1", kind="update_accepted", payload={"digest": "ab" * 32}, author="silo:hungary"
    )
    signature = sign_statement(SILO, statement)
    for i in range(5):
        _append_service(engine, i)
    with transaction(factory) as session:
        entry = ledger.append(
            session,
            kind=statement.kind,
            payload=statement.payload,
            run_id=statement.run_id,
            author=statement.author,
            service_key=SERVICE,
            author_signature=signature,
            author_key=SILO.public_key(),
        )
    assert entry.seq == 6 and entry.payload == statement.payload
    verify_receipt(ledger.receipt(entry, SERVICE), statement, signature, SERVICE.public_key())
    with factory() as session:
        assert ledger.head(session) == entry
        row = session.execute(text("SELECT seq, entry_hash FROM ledger_head")).one()
        assert tuple(row) == (6, entry.entry_hash)
        orm_row = session.get(ledger.LedgerEntry, 6)
        assert orm_row is not None and orm_row.to_record() == entry
    records = _records(engine)
    assert [r.seq for r in records] == [1, 2, 3, 4, 5, 6]
    assert verify_chain(records, KEYS).ok


def test_refused_entries_leave_no_trace(engine: Engine) -> None:
    factory = make_sessionmaker(engine)
    statement = make_statement(
        run_id="r", kind="dropout", payload={"round": 2}, author="silo:hungary"
    )
    forged = sign_statement(Ed25519PrivateKey.generate(), statement)
    cases = [
        ({"kind": "coffee_break", "payload": {}, "author": "service"}, "unknown ledger kind"),
        ({"kind": "metrics", "payload": {"auc": float("nan")}, "author": "service"}, "NaN"),
        ({"kind": "metrics", "payload": {}, "author": "hospital"}, "not 'service' or"),
        ({"kind": "dropout", "payload": {}, "author": "silo:hungary"}, "is required"),
        (
            {"kind": "dropout", "payload": {}, "author": "service", "author_signature": "00"},
            "must be None",
        ),
        (
            {
                "kind": "dropout",
                "payload": statement.payload,
                "author": "silo:hungary",
                "author_signature": forged,
                "author_key": SILO.public_key(),
            },
            "does not verify with silo:hungary's registered key",
        ),
    ]
    for kwargs, message in cases:
        with pytest.raises(ledger.LedgerAppendError, match=message), transaction(factory) as s:
            ledger.append(s, run_id="r", service_key=SERVICE, **kwargs)  # type: ignore[arg-type]
    assert _records(engine) == []


def test_update_delete_and_truncate_are_refused(engine: Engine) -> None:
    _append_service(engine, 1)
    statements = [
        "UPDATE ledger_entries SET payload = '{}' WHERE seq = 1",
        "DELETE FROM ledger_entries WHERE seq = 1",
        "DELETE FROM ledger_entries",
    ]
    if engine.dialect.name == "postgresql":
        statements.append("TRUNCATE ledger_entries")
    for statement in statements:
        with pytest.raises(DBAPIError, match="ledger is append-only"), engine.begin() as conn:
            conn.execute(text(statement))
    assert len(_records(engine)) == 1
    assert verify_chain(_records(engine), KEYS).ok


def test_grant_statements_limit_the_service_role() -> None:
    assert ledger_guard.grant_statements("fedsilo_service") == [
        "REVOKE ALL ON ledger_entries FROM fedsilo_service",
        "GRANT SELECT, INSERT ON ledger_entries TO fedsilo_service",
        "GRANT SELECT, INSERT, UPDATE ON ledger_head TO fedsilo_service",
    ]
    with pytest.raises(ValueError, match="plain SQL identifier"):
        ledger_guard.grant_statements("x; DROP TABLE ledger_entries")


def _writer(engine: Engine, name: str, count: int, barrier: threading.Barrier | None) -> None:
    if barrier is not None:
        barrier.wait()
    for i in range(count):
        _append_service(engine, i, run_id=name)


def _assert_single_chain(engine: Engine, writers: list[str], count: int) -> None:
    records = _records(engine)
    report = verify_chain(records, KEYS)
    assert report.ok, report.reason
    assert report.head_seq == len(writers) * count
    for name in writers:
        assert sum(r.run_id == name for r in records) == count
    run_ids = [r.run_id for r in records]
    # The writers really interleaved, so the lock was contended rather than never needed.
    assert sum(a != b for a, b in zip(run_ids, run_ids[1:], strict=False)) > 2


def test_concurrent_threads_never_fork_the_chain(engine: Engine) -> None:
    barrier = threading.Barrier(2)
    threads = [
        threading.Thread(target=_writer, args=(engine, f"writer-{n}", 200, barrier)) for n in (1, 2)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    _assert_single_chain(engine, ["writer-1", "writer-2"], 200)


def _process_writer(url: str, name: str, count: int, start: multiprocessing.Barrier) -> None:  # type: ignore[valid-type]
    engine = make_engine(url)
    engine.connect().close()  # connect before the start, so that both writers start together
    # a barrier, not an event the parent sets: on an idle machine one child could otherwise
    # write all its entries while the other was still connecting (CI of c6e937f)
    start.wait(60)  # type: ignore[attr-defined]
    _writer(engine, name, count, None)
    engine.dispose()


def test_concurrent_processes_never_fork_the_chain(engine: Engine) -> None:
    context = multiprocessing.get_context("fork")
    start = context.Barrier(2)  # both writers connected: then both go
    url = engine.url.render_as_string(hide_password=False)
    engine.dispose()  # children open their own connections
    procs = [
        context.Process(target=_process_writer, args=(url, f"proc-{n}", 200, start)) for n in (1, 2)
    ]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(timeout=120)
        assert proc.exitcode == 0
    _assert_single_chain(engine, ["proc-1", "proc-2"], 200)


def test_a_stale_head_guess_falls_back_to_locking(engine: Engine) -> None:
    """Two engines (as two service processes) alternate: each one's remembered head is stale."""
    other = make_engine(engine.url.render_as_string(hide_password=False))
    try:
        for i in range(6):
            _append_service(engine if i % 2 else other, i, run_id=f"run-{i % 2}")
        factory = make_sessionmaker(engine)
        # A rolled-back append leaves a guess that was never committed; the next append
        # must still land right after the committed head.
        with pytest.raises(RuntimeError, match="roll back"), transaction(factory) as session:
            ledger.append(
                session,
                kind="metrics",
                payload={"i": 99},
                run_id="run-x",
                author="service",
                service_key=SERVICE,
            )
            raise RuntimeError("roll back")
        _append_service(engine, 7)
        _append_service(other, 8)
    finally:
        other.dispose()
    records = _records(engine)
    assert [r.seq for r in records] == list(range(1, 9))
    assert all(r.payload != '{"i":99}' for r in records)
    assert verify_chain(records, KEYS).ok
    assert ledger._LAST_HEAD[engine] == (7, records[6].entry_hash)


def test_a_head_row_moved_behind_the_ledger_cannot_fork_it(engine: Engine) -> None:
    """If ledger_head is set back (by hand), the database refuses the duplicate seq/prev_hash."""
    for i in range(3):
        _append_service(engine, i)
    first = _records(engine)[0]
    with engine.begin() as conn:
        conn.execute(
            text("UPDATE ledger_head SET seq = 1, entry_hash = :h WHERE id = 1"),
            {"h": first.entry_hash},
        )
    with pytest.raises(DBAPIError, match="(?i)unique"):
        _append_service(engine, 3)
    records = _records(engine)
    assert [r.seq for r in records] == [1, 2, 3]
    assert verify_chain(records, KEYS).ok
