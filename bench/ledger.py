"""Lineage ledger benchmark: append throughput and verification time.

Prints
  * appends/s on a SQLite file database (and on PostgreSQL when FEDSILO_TEST_PG_URL is set, in a
    throw-away database created on that server), each append in its own transaction, ~300-byte
    payloads, half of them silo-authored (the silo's statement signature is made beforehand, as
    the silo would; the service checks it against the silo's key inside `append`);
  * the time to verify a 100k-entry ledger (same mix): from memory, from the SQLite database
    (read + verify), and from an export file (parse + verify).

Targets (issue 7): 1,000 appends/s and verify of 100k entries under 10 s. Verification uses
libsodium when PyNaCl is installed (about twice as fast as OpenSSL's Ed25519 here).

    python bench/ledger.py [--appends 2000] [--entries 100000]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from sqlalchemy import insert, text
from sqlalchemy.orm import Session, sessionmaker

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from aggregation.service import ledger, ledger_guard  # noqa: E402
from aggregation.service.db import Base, make_engine, make_sessionmaker, transaction  # noqa: E402
from schemas.ledger_verify import export_entries, load_export, verify_chain  # noqa: E402
from schemas.lineage import (  # noqa: E402
    ED25519_BACKEND,
    GENESIS_HASH,
    SERVICE_AUTHOR,
    LineageEntry,
    Statement,
    entry_signing_message,
    make_statement,
    seal_entry,
    sign_statement,
    statement_message,
    utc_now_iso,
    verify_signature,
)

SERVICE = Ed25519PrivateKey.generate()
SILOS = {f"silo:hospital-{i}": Ed25519PrivateKey.generate() for i in range(4)}
KEYS: dict[str, Ed25519PublicKey] = {
    "service": SERVICE.public_key(),
    **{name: key.public_key() for name, key in SILOS.items()},
}


def _event(i: int) -> tuple[Statement, str | None]:
    """Entry i of a synthetic run: even entries a silo's update, odd ones the service's metrics."""
    if i % 2 == 0:
        author = f"silo:hospital-{(i // 2) % 4}"
        payload = {
            "round": i // 8,
            "update_sha256": f"{i:064x}",
            "n_examples": 293 + i % 7,
            "clip_norm": 1.0,
            "noise_multiplier": 0.8,
            "silo_flow_run_id": str(uuid.UUID(int=i)),
            "bytes": 41236,
            "data_fingerprint": f"{i * 7919:064x}",
        }
        statement = make_statement(
            run_id="run-bench", kind="update_accepted", payload=payload, author=author
        )
        return statement, sign_statement(SILOS[author], statement)
    payload = {
        "round": i // 8,
        "loss": 0.4123456789 - i * 1e-7,
        "auc": 0.8123456789,
        "accuracy": 0.7654321,
        "per_silo": {
            f"hospital-{k}": {"auc": 0.8 + k / 100, "loss": 0.41 - k / 97, "n": 100 + k}
            for k in range(4)
        },
    }
    return make_statement(
        run_id="run-bench", kind="metrics", payload=payload, author="service"
    ), None


def _baseline_append(session: Session, **kwargs: Any) -> LineageEntry:
    """`ledger.append` as it was before the round-trip work (kept for the A/B comparison).

    Advisory lock, then lock and read the head row, then two compiled Core statements (insert
    and move the head): four statements per append on PostgreSQL, three on SQLite.
    """
    statement = make_statement(
        run_id=kwargs["run_id"],
        kind=kwargs["kind"],
        payload=kwargs["payload"],
        author=kwargs["author"],
    )
    signature, key = kwargs["author_signature"], kwargs["author_key"]
    if key is not None and not verify_signature(key, signature, statement.message()):
        raise ledger.LedgerAppendError("author_signature does not verify")
    connection = session.connection()
    if connection.dialect.name == "postgresql":
        connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": LOCK_KEY})
    row = connection.execute(_BASELINE_LOCK_HEAD).first()
    if row is None:
        connection.execute(
            insert(ledger.HEAD_TABLE), {"id": 1, "seq": 0, "entry_hash": GENESIS_HASH}
        )
        row = (0, GENESIS_HASH)
    record = seal_entry(
        statement,
        seq=row[0] + 1,
        prev_hash=row[1],
        created_at=utc_now_iso(),
        service_key=kwargs["service_key"],
        author_signature=signature,
    )
    connection.execute(insert(ledger.ENTRIES_TABLE), record.model_dump())
    connection.execute(_BASELINE_MOVE_HEAD, {"seq": record.seq, "entry_hash": record.entry_hash})
    return record


LOCK_KEY = int.from_bytes(b"fedsilo", "big")
_BASELINE_LOCK_HEAD = text(
    "UPDATE ledger_head SET seq = seq WHERE id = 1 RETURNING seq, entry_hash"
)
_BASELINE_MOVE_HEAD = text(
    "UPDATE ledger_head SET seq = :seq, entry_hash = :entry_hash WHERE id = 1"
)
APPENDERS: dict[str, Callable[..., LineageEntry]] = {
    "baseline": _baseline_append,
    "current": ledger.append,
}


def _fresh_ledger(url: str) -> sessionmaker[Session]:
    engine = make_engine(url)
    Base.metadata.create_all(engine, tables=list(ledger.metadata_tables))
    with engine.begin() as conn:
        ledger_guard.install(conn)
    return make_sessionmaker(engine)


def bench_appends(urls: dict[str, str], count: int, block: int = 100) -> dict[str, float]:
    """Appends/s of each appender in `urls` (its own database), each append its own transaction.

    The appenders take turns in blocks of `block` appends, so that load from other jobs on
    the machine falls on all of them alike; the ratio is the number to trust.
    """
    factories = {name: _fresh_ledger(url) for name, url in urls.items()}
    events = [_event(i) for i in range(count)]
    size = sum(len(s.payload) for s, _ in events) / count
    took = dict.fromkeys(urls, 0.0)
    for lo in range(0, count, block):
        for name, factory in factories.items():
            append = APPENDERS[name]
            start = time.perf_counter()
            for statement, signature in events[lo : lo + block]:
                with transaction(factory) as session:
                    append(
                        session,
                        kind=statement.kind,
                        payload=statement.payload,
                        run_id=statement.run_id,
                        author=statement.author,
                        service_key=SERVICE,
                        author_signature=signature,
                        author_key=KEYS[statement.author] if signature else None,
                    )
            took[name] += time.perf_counter() - start
    for factory in factories.values():
        with factory() as session:
            assert verify_chain(list(ledger.iter_records(session)), KEYS).ok
        engine = factory.kw["bind"]
        engine.dispose()
    print(f"  payload {size:.0f} bytes on average")
    return {name: count / seconds for name, seconds in took.items()}


def _print_rates(db: str, rates: dict[str, float]) -> None:
    for name, rate in rates.items():
        print(f"{db} append ({name}): {rate:,.0f} appends/s (target 1,000)")
    print(f"{db} append: current / baseline = {rates['current'] / rates['baseline']:.2f}x")


def build_chain(count: int) -> list[LineageEntry]:
    entries: list[LineageEntry] = []
    prev = GENESIS_HASH
    for i in range(count):
        statement, signature = _event(i)
        entry = seal_entry(
            statement,
            seq=i + 1,
            prev_hash=prev,
            created_at=f"2026-01-01T00:00:00.{i:06d}Z",
            service_key=SERVICE,
            author_signature=signature,
        )
        entries.append(entry)
        prev = entry.entry_hash
    return entries


def _baseline_verify(entries: list[LineageEntry], keys: dict[str, Ed25519PublicKey]) -> bool:
    """`verify_chain`'s strategy before the parallel scan (success path only, for the A/B).

    One serial pass over seq, hashes and links, then every signature check spread over
    threads (the C call releases the GIL, the Python around it does not).
    """
    prev = GENESIS_HASH
    for pos, entry in enumerate(entries):
        if entry.seq != pos + 1 or entry.recompute_hash() != entry.entry_hash:
            return False
        if entry.prev_hash != prev:
            return False
        prev = entry.entry_hash
    jobs = []
    for entry in entries:
        if entry.author != SERVICE_AUTHOR:
            msg = statement_message(
                run_id=entry.run_id, kind=entry.kind, payload=entry.payload, author=entry.author
            )
            jobs.append((keys[entry.author], entry.author_signature, msg))
        jobs.append(
            (keys["service"], entry.service_signature, entry_signing_message(entry.entry_hash))
        )
    workers = os.cpu_count() or 1
    size = -(-len(jobs) // workers)
    chunks = [jobs[i : i + size] for i in range(0, len(jobs), size)]
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return all(pool.map(lambda c: all(verify_signature(*job) for job in c), chunks))


def _timed(label: str, run: Callable[[], object]) -> float:
    start, cpu = time.perf_counter(), time.process_time()
    assert run(), label
    took, cpu = time.perf_counter() - start, time.process_time() - cpu
    # CPU seconds of this process (forked workers not included) do not depend on other jobs.
    print(f"{label}: {took:.2f} s wall, {cpu:.2f} CPU-s in this process")
    return took


def bench_verify(count: int, workdir: Path) -> None:
    print(f"building a {count:,}-entry ledger ...", flush=True)
    entries = build_chain(count)
    print(f"verify {count:,} entries in memory ({os.cpu_count()} CPUs), target under 10 s:")
    old = _timed("  baseline (serial + threads)", lambda: _baseline_verify(entries, KEYS))
    new = _timed("  current (parallel scan)", lambda: verify_chain(entries, KEYS).ok)
    print(f"  current / baseline speed = {old / new:.2f}x")

    engine = make_engine(f"sqlite:///{workdir / 'verify.db'}")
    Base.metadata.create_all(engine, tables=list(ledger.metadata_tables))
    with engine.begin() as conn:
        conn.execute(ledger.ENTRIES_TABLE.insert(), [e.model_dump() for e in entries])
    with make_sessionmaker(engine)() as session:
        _timed(
            f"read from SQLite + verify {count:,} entries",
            lambda: verify_chain(list(ledger.iter_records(session)), KEYS).ok,
        )
    engine.dispose()

    text = export_entries(entries)
    _timed(
        f"load export ({len(text) / 1e6:.0f} MB) + verify {count:,} entries",
        lambda: verify_chain(load_export(text), KEYS).ok,
    )


def _pg_bench(url: str, count: int) -> None:
    import psycopg
    from psycopg import sql
    from sqlalchemy.engine import make_url

    admin = make_url(url)
    dsn = admin.set(drivername="postgresql").render_as_string(hide_password=False)
    name = f"fedsilo_bench_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        urls = {}
        for appender in APPENDERS:
            db = f"{name}_{appender}"
            with psycopg.connect(dsn, autocommit=True) as conn:
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(db)))
            urls[appender] = admin.set(database=db).render_as_string(hide_password=False)
        _print_rates("PostgreSQL", bench_appends(urls, count))
    finally:
        with psycopg.connect(dsn, autocommit=True) as conn:
            for db in [name, *(f"{name}_{appender}" for appender in APPENDERS)]:
                conn.execute(
                    sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(db))
                )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--appends", type=int, default=2000)
    parser.add_argument("--entries", type=int, default=100_000)
    args = parser.parse_args()
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"{os.cpu_count()} CPUs, load average {load}; Ed25519 verification by {ED25519_BACKEND}")
    with tempfile.TemporaryDirectory(prefix="fedsilo-bench-ledger-") as tmp:
        workdir = Path(tmp)
        urls = {name: f"sqlite:///{workdir / f'append-{name}.db'}" for name in APPENDERS}
        _print_rates("SQLite", bench_appends(urls, args.appends))
        pg_url = os.environ.get("FEDSILO_TEST_PG_URL")
        if pg_url:
            _pg_bench(pg_url, args.appends)
        else:
            print("PostgreSQL append: skipped (set FEDSILO_TEST_PG_URL)")
        if args.entries:
            bench_verify(args.entries, workdir)


if __name__ == "__main__":
    main()
