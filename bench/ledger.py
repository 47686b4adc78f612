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
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from aggregation.ledger_verify import export_entries, load_export, verify_chain  # noqa: E402
from aggregation.service import ledger, ledger_guard  # noqa: E402
from aggregation.service.db import Base, make_engine, make_sessionmaker, transaction  # noqa: E402
from schemas.lineage import (  # noqa: E402
    ED25519_BACKEND,
    GENESIS_HASH,
    LineageEntry,
    Statement,
    make_statement,
    seal_entry,
    sign_statement,
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


def bench_appends(url: str, count: int) -> float:
    """Appends/s for `count` appends, each in its own transaction."""
    engine = make_engine(url)
    Base.metadata.create_all(engine, tables=list(ledger.metadata_tables))
    with engine.begin() as conn:
        ledger_guard.install(conn)
    factory = make_sessionmaker(engine)
    events = [_event(i) for i in range(count)]
    size = sum(len(s.payload) for s, _ in events) / count
    start = time.perf_counter()
    for statement, signature in events:
        with transaction(factory) as session:
            ledger.append(
                session,
                kind=statement.kind,
                payload=statement.payload,
                run_id=statement.run_id,
                author=statement.author,
                service_key=SERVICE,
                author_signature=signature,
                author_key=KEYS[statement.author] if signature else None,
            )
    rate = count / (time.perf_counter() - start)
    with factory() as session:
        assert verify_chain(list(ledger.iter_records(session)), KEYS).ok
    engine.dispose()
    print(f"  payload {size:.0f} bytes on average")
    return rate


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


def bench_verify(count: int, workdir: Path) -> None:
    print(f"building a {count:,}-entry ledger ...", flush=True)
    entries = build_chain(count)
    start, cpu = time.perf_counter(), time.process_time()
    report = verify_chain(entries, KEYS)
    took, cpu = time.perf_counter() - start, time.process_time() - cpu
    assert report.ok, report.reason
    # CPU seconds do not depend on what else runs on the machine; wall time does.
    print(
        f"verify {count:,} entries (in memory, {os.cpu_count()} threads): {took:.2f} s wall, "
        f"{cpu:.2f} CPU-s"
    )

    engine = make_engine(f"sqlite:///{workdir / 'verify.db'}")
    Base.metadata.create_all(engine, tables=list(ledger.metadata_tables))
    with engine.begin() as conn:
        conn.execute(ledger.ENTRIES_TABLE.insert(), [e.model_dump() for e in entries])
    start = time.perf_counter()
    with make_sessionmaker(engine)() as session:
        report = verify_chain(list(ledger.iter_records(session)), KEYS)
    took = time.perf_counter() - start
    engine.dispose()
    assert report.ok, report.reason
    print(f"read from SQLite + verify {count:,} entries: {took:.2f} s")

    text = export_entries(entries)
    start = time.perf_counter()
    report = verify_chain(load_export(text), KEYS)
    took = time.perf_counter() - start
    assert report.ok, report.reason
    print(f"load export ({len(text) / 1e6:.0f} MB) + verify {count:,} entries: {took:.2f} s")


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
        db_url = admin.set(database=name).render_as_string(hide_password=False)
        print(f"PostgreSQL append: {bench_appends(db_url, count):,.0f} appends/s")
    finally:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
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
        rate = bench_appends(f"sqlite:///{workdir / 'append.db'}", args.appends)
        print(f"SQLite append: {rate:,.0f} appends/s (target 1,000)")
        pg_url = os.environ.get("FEDSILO_TEST_PG_URL")
        if pg_url:
            _pg_bench(pg_url, args.appends)
        else:
            print("PostgreSQL append: skipped (set FEDSILO_TEST_PG_URL)")
        bench_verify(args.entries, workdir)


if __name__ == "__main__":
    main()
