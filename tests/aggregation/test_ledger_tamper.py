"""Tampering with the ledger in the database, or with the files it names, is detected precisely.

The attacker here has the database owner's rights: each test first drops the append-only
triggers (as such an attacker would), then edits rows directly. On SQLite one test edits the
database file's bytes instead, bypassing SQL altogether. The last tests give the attacker the
service's signing key too: only the silos' countersigned checkpoints catch them, and a service
whose triggers were dropped refuses to start.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import Connection, Engine, Table, text
from typer.testing import CliRunner

from aggregation.service import checkpoints, ledger, ledger_guard
from aggregation.service.db import Base, make_engine, make_sessionmaker, transaction
from aggregation.service.lineage import Recorder
from aggregation.service.main import create_app
from aggregation.service.settings import ServiceSettings
from aggregation.service.tables import LedgerCheckpoint, LedgerCountersignature
from flows.cli import app as cli_app
from schemas.ledger_anchor import check_anchors
from schemas.ledger_checkpoint import AnchoredCheckpoint, countersign, verify_checkpoint
from schemas.ledger_verify import (
    ExportTruncatedError,
    SiloRecord,
    cross_check,
    directory_artifact_checker,
    export_entries,
    load_export,
    verify_chain,
)
from schemas.lineage import (
    LineageEntry,
    entry_signing_message,
    make_statement,
    sign_statement,
)

SERVICE = Ed25519PrivateKey.generate()
SILOS = {
    "silo:hungary": Ed25519PrivateKey.generate(),
    "silo:cleveland": Ed25519PrivateKey.generate(),
}
KEYS = {"service": SERVICE.public_key(), **{n: k.public_key() for n, k in SILOS.items()}}
MODEL = "models/run-x/v3.safetensors"
N_ENTRIES = 32
MODEL_SEQ = 25
CHECKPOINT_TABLES = [
    cast(Table, LedgerCheckpoint.__table__),
    cast(Table, LedgerCountersignature.__table__),
]


@dataclass
class Ledger:
    engine: Engine
    store: Path
    silo_copy: list[SiloRecord]

    def records(self) -> list[LineageEntry]:
        with make_sessionmaker(self.engine)() as session:
            return list(ledger.iter_records(session))

    def verify(self) -> str | None:
        return verify_chain(self.records(), KEYS, directory_artifact_checker(self.store)).reason


def _append(factory, kind: str, payload: dict, author: str = "service") -> LineageEntry:  # type: ignore[no-untyped-def]
    statement = make_statement(run_id="run-x", kind=kind, payload=payload, author=author)
    signature = None if author == "service" else sign_statement(SILOS[author], statement)
    with transaction(factory) as session:
        return ledger.append(
            session,
            kind=kind,
            payload=statement.payload,
            run_id="run-x",
            author=author,
            service_key=SERVICE,
            author_signature=signature,
            author_key=KEYS[author] if signature else None,
        )


def _fill(engine: Engine, store: Path) -> list[SiloRecord]:
    """A 32-entry run; returns silo:hungary's own copy (statements + receipts)."""
    factory = make_sessionmaker(engine)
    model = store / MODEL
    model.parent.mkdir(parents=True)
    model.write_bytes(b"safetensors bytes of the v3 global model")
    copy: list[SiloRecord] = []
    _append(factory, "run_started", {"config_sha256": "c" * 64, "fedsilo": "0.1.0"})
    for seq in range(2, N_ENTRIES + 1):
        if seq == MODEL_SEQ:
            digest = hashlib.sha256(model.read_bytes()).hexdigest()
            _append(factory, "model_saved", {"path": MODEL, "sha256": digest})
        elif seq % 3 == 0:
            author = "silo:hungary" if seq % 2 else "silo:cleveland"
            payload = {"digest": hashlib.sha256(str(seq).encode()).hexdigest(), "round": seq}
            entry = _append(factory, "update_accepted", payload, author)
            if author == "silo:hungary":
                record = SiloRecord(
                    statement=entry.statement(),
                    author_signature=str(entry.author_signature),
                    receipt=ledger.receipt(entry, SERVICE),
                )
                copy.append(record)
        else:
            _append(factory, "metrics", {"round": seq, "auc": 0.7 + seq / 1000, "loss": 0.25})
    return copy


@pytest.fixture
def filled(db_url: str, tmp_path: Path) -> Iterator[Ledger]:
    engine = make_engine(db_url)
    Base.metadata.create_all(engine, tables=list(ledger.metadata_tables))
    with engine.begin() as conn:
        ledger_guard.install(conn)
    copy = _fill(engine, tmp_path / "store")
    book = Ledger(engine, tmp_path / "store", copy)
    assert book.verify() is None
    yield book
    engine.dispose()


def _drop_guard(conn: Connection) -> None:
    """What an attacker with the owner's rights does first."""
    if conn.dialect.name == "postgresql":
        conn.execute(text("DROP TRIGGER ledger_entries_no_update_delete ON ledger_entries"))
    else:
        conn.execute(text("DROP TRIGGER ledger_entries_no_update"))
        conn.execute(text("DROP TRIGGER ledger_entries_no_delete"))


def test_one_byte_of_one_payload_changed(filled: Ledger) -> None:
    with filled.engine.begin() as conn:
        _drop_guard(conn)
        payload = conn.execute(text("SELECT payload FROM ledger_entries WHERE seq = 17")).scalar()
        altered = payload.replace('"loss":0.25', '"loss":0.15')
        assert altered != payload and len(altered) == len(payload)
        conn.execute(text("UPDATE ledger_entries SET payload = :p WHERE seq = 17"), {"p": altered})
    assert filled.verify() == "entry 17: entry_hash mismatch (content altered)"


def test_sqlite_file_edited_directly(sqlite_url: str, tmp_path: Path) -> None:
    engine = make_engine(sqlite_url)
    Base.metadata.create_all(engine, tables=list(ledger.metadata_tables))
    with engine.begin() as conn:
        ledger_guard.install(conn)
    _fill(engine, tmp_path / "store")
    with engine.begin() as conn:
        conn.execute(text("PRAGMA wal_checkpoint(TRUNCATE)"))
    engine.dispose()
    path = Path(sqlite_url.removeprefix("sqlite:///"))
    data = path.read_bytes()
    needle = b'"auc":0.717,'  # entry 17's payload, byte for byte
    assert data.count(needle) == 1
    path.write_bytes(data.replace(needle, b'"auc":0.917,'))
    book = Ledger(make_engine(sqlite_url), tmp_path / "store", [])
    assert book.verify() == "entry 17: entry_hash mismatch (content altered)"
    book.engine.dispose()


def test_entry_deleted(filled: Ledger) -> None:
    with filled.engine.begin() as conn:
        _drop_guard(conn)
        conn.execute(text("DELETE FROM ledger_entries WHERE seq = 18"))
    assert filled.verify() == "entry 18 missing (seq jumps 17 -> 19)"


def test_two_entries_reordered(filled: Ledger) -> None:
    with filled.engine.begin() as conn:
        _drop_guard(conn)
        conn.execute(text("UPDATE ledger_entries SET seq = -1 WHERE seq = 20"))
        conn.execute(text("UPDATE ledger_entries SET seq = 20 WHERE seq = 21"))
        conn.execute(text("UPDATE ledger_entries SET seq = 21 WHERE seq = -1"))
    assert filled.verify() == (
        "entries 20 and 21 out of order (the entry stored as seq 20 was written as seq 21)"
    )


def test_model_file_replaced_on_disk(filled: Ledger) -> None:
    (filled.store / MODEL).write_bytes(b"a different model, same name")
    reason = str(filled.verify())
    assert reason.startswith(f"entry {MODEL_SEQ}: artifact {MODEL} sha256 mismatch")


def test_forged_silo_signature(filled: Ledger) -> None:
    # A service that invents a silo's statement cannot sign it with the silo's key.
    statement = make_statement(
        run_id="run-x", kind="privacy_spent", payload={"epsilon": 0.1}, author="silo:hungary"
    )
    forged = sign_statement(Ed25519PrivateKey.generate(), statement)
    with transaction(make_sessionmaker(filled.engine)) as session:
        ledger.append(
            session,
            kind=statement.kind,
            payload=statement.payload,
            run_id="run-x",
            author="silo:hungary",
            service_key=SERVICE,
            author_signature=forged,
        )
    assert filled.verify() == f"entry {N_ENTRIES + 1}: silo:hungary signature invalid"


def test_export_truncated_mid_file(filled: Ledger) -> None:
    text_ = export_entries(filled.records())
    assert load_export(text_) == filled.records()
    cut = text_[: len(text_) // 2]
    whole_entries = cut.count("\n") - 1
    with pytest.raises(ExportTruncatedError) as info:
        load_export(cut)
    assert str(info.value) == f"export truncated after entry {whole_entries} (partial last line)"


def test_history_rewritten_with_the_service_key_is_caught_by_the_silo_copy(filled: Ledger) -> None:
    """An attacker holding the service key re-hashes and re-signs everything after the edit."""
    target = filled.silo_copy[1].receipt.seq
    entries = filled.records()
    rewritten: list[LineageEntry] = []
    prev = entries[target - 2].entry_hash
    for entry in entries[target - 1 :]:
        payload = entry.payload
        if entry.seq == target:
            payload = payload.replace('"round":', '"round":1', 1)
        redone = entry.model_copy(update={"payload": payload, "prev_hash": prev})
        new_hash = redone.recompute_hash()
        signature = SERVICE.sign(entry_signing_message(new_hash)).hex()
        rewritten.append(
            redone.model_copy(update={"entry_hash": new_hash, "service_signature": signature})
        )
        prev = new_hash
    with filled.engine.begin() as conn:
        _drop_guard(conn)
        for entry in rewritten:
            conn.execute(
                text(
                    "UPDATE ledger_entries SET payload = :payload, prev_hash = :prev_hash, "
                    "entry_hash = :entry_hash, service_signature = :service_signature "
                    "WHERE seq = :seq"
                ),
                entry.model_dump(),
            )
    report = cross_check(filled.silo_copy, filled.records(), service_public_key=KEYS["service"])
    assert report.problems[0] == (
        f"entry {target} authored by silo:hungary differs from the receipted copy (payload "
        "changed): the service rewrote history"
    )
    # Every later entry of the silo moved onto the forged chain, and the silo sees that too.
    assert len(report.problems) == len(filled.silo_copy) - 1
    assert all("(prev_hash changed)" in p for p in report.problems[1:])
    assert filled.verify() == f"entry {target}: silo:hungary signature invalid"


# ----------------------------------------------------------------------------- anchored ledger
# An attacker with database access *and* the service key. Before checkpoints, each attack below
# passed every check (`verify_chain`, and `cross_check` with the silo's receipts): the tests
# assert that first, then that the silo's countersigned checkpoint names the attack.

RUN_END_SEQ = N_ENTRIES + 1


def _anchor_run_end(book: Ledger) -> list[AnchoredCheckpoint]:
    """The service ends the run (a checkpoint at run_finished); silo:hungary countersigns it
    and keeps it in its own copy, which is returned."""
    Base.metadata.create_all(book.engine, tables=CHECKPOINT_TABLES)
    factory = make_sessionmaker(book.engine)
    recorder = Recorder(SERVICE, book.store)
    with transaction(factory) as session:
        end = recorder.service(session, "run_finished", {"status": "finished"}, "run-x")
    assert end.seq == RUN_END_SEQ
    with factory() as session:
        [published] = checkpoints.anchored(session)
    cp = published.checkpoint
    assert (cp.height, cp.head_hash, cp.event) == (end.seq, end.entry_hash, "run_finished")
    verify_checkpoint(cp, KEYS["service"])
    mine = countersign(cp, "silo:hungary", SILOS["silo:hungary"])
    with transaction(factory) as session:
        checkpoints.add_countersignature(
            session,
            height=cp.height,
            silo="hungary",
            signature=mine.signature,
            silo_key=KEYS["silo:hungary"],
        )
    return [AnchoredCheckpoint(checkpoint=cp, countersignatures=(mine,))]


def _hide_checkpoints(conn: Connection) -> None:
    conn.execute(text("DELETE FROM ledger_countersignatures"))
    conn.execute(text("DELETE FROM ledger_checkpoints"))


def _undetected_before(book: Ledger) -> None:
    """What the attack looked like to the checks that existed before checkpoints."""
    records = book.records()
    assert book.verify() is None
    report = cross_check(book.silo_copy, records, service_public_key=KEYS["service"])
    assert report.ok, report.problems
    assert load_export(export_entries(records)) == records


def test_service_only_tail_deleted_and_head_fixed(filled: Ledger) -> None:
    kept = _anchor_run_end(filled)
    last_silo_seq = max(r.receipt.seq for r in filled.silo_copy)
    cut = N_ENTRIES - 2  # drop entries 31, 32 (metrics) and 33 (run_finished)
    assert cut >= last_silo_seq
    with filled.engine.begin() as conn:
        _drop_guard(conn)
        _hide_checkpoints(conn)
        conn.execute(text("DELETE FROM ledger_entries WHERE seq > :cut"), {"cut": cut})
        head = conn.execute(
            text("SELECT entry_hash FROM ledger_entries WHERE seq = :cut"), {"cut": cut}
        ).scalar()
        conn.execute(
            text("UPDATE ledger_head SET seq = :seq, entry_hash = :h"), {"seq": cut, "h": head}
        )
    _undetected_before(filled)
    report = check_anchors(filled.records(), kept, KEYS)
    assert report.problems == (
        f"ledger ends at seq {cut} but checkpoint of the end of run run-x (run_finished) "
        f"countersigned by silo:hungary says height {RUN_END_SEQ} with head "
        f"{kept[0].checkpoint.head_hash}: entries {cut + 1}..{RUN_END_SEQ} (at least) were "
        "removed",
    )


def test_service_entry_rewritten_and_rechained_with_the_service_key(filled: Ledger) -> None:
    kept = _anchor_run_end(filled)
    target = N_ENTRIES - 1  # a metrics entry after the silos' last receipted entry
    entries = filled.records()
    assert entries[target - 1].kind == "metrics"
    prev, rewritten = entries[target - 2].entry_hash, []
    for entry in entries[target - 1 :]:
        payload = entry.payload.replace('"loss":0.25', '"loss":0.05')
        redone = entry.model_copy(update={"payload": payload, "prev_hash": prev})
        new_hash = redone.recompute_hash()
        signature = SERVICE.sign(entry_signing_message(new_hash)).hex()
        rewritten.append(
            redone.model_copy(update={"entry_hash": new_hash, "service_signature": signature})
        )
        prev = new_hash
    with filled.engine.begin() as conn:
        _drop_guard(conn)
        _hide_checkpoints(conn)
        for entry in rewritten:
            conn.execute(
                text(
                    "UPDATE ledger_entries SET payload = :payload, prev_hash = :prev_hash, "
                    "entry_hash = :entry_hash, service_signature = :service_signature "
                    "WHERE seq = :seq"
                ),
                entry.model_dump(),
            )
        conn.execute(text("UPDATE ledger_head SET entry_hash = :h"), {"h": prev})
    _undetected_before(filled)
    report = check_anchors(filled.records(), kept, KEYS)
    assert len(report.problems) == 1
    assert report.problems[0].startswith(
        f"entry {RUN_END_SEQ}'s hash differs from the checkpoint of the end of run run-x "
        f"(run_finished) countersigned by silo:hungary (ledger {prev}, checkpoint "
        f"{kept[0].checkpoint.head_hash})"
    )


def _drop_all_guards(conn: Connection) -> list[str]:
    if conn.dialect.name == "postgresql":
        conn.execute(text("DROP TRIGGER ledger_entries_no_update_delete ON ledger_entries"))
        return ["ledger_entries_no_update_delete"]
    conn.execute(text("DROP TRIGGER ledger_entries_no_delete"))
    return ["ledger_entries_no_delete"]


def test_service_refuses_to_start_without_its_triggers(db_url: str, tmp_path: Path) -> None:
    settings = ServiceSettings(workspace=tmp_path / "svc", database_url=db_url)
    create_app(settings).state.engine.dispose()  # migrates; the triggers are in place
    engine = make_engine(db_url)
    with engine.begin() as conn:
        dropped = _drop_all_guards(conn)
    with pytest.raises(ledger_guard.LedgerGuardMissing) as info:
        create_app(settings)
    message = str(info.value)
    assert all(name in message for name in dropped)
    assert ledger_guard.REINSTALL_COMMAND in message
    reinstall = CliRunner().invoke(
        cli_app, ["lineage", "reinstall-ledger-guard", "--database-url", db_url]
    )
    assert reinstall.exit_code == 0, reinstall.output
    assert f"were missing: {', '.join(dropped)}" in " ".join(reinstall.output.split())
    with engine.begin() as conn:
        if conn.dialect.name == "postgresql":  # disabling a trigger counts as missing too
            conn.execute(
                text("ALTER TABLE ledger_entries DISABLE TRIGGER ledger_entries_no_truncate")
            )
    if engine.dialect.name == "postgresql":
        with pytest.raises(ledger_guard.LedgerGuardMissing, match="ledger_entries_no_truncate"):
            create_app(settings)
        with engine.begin() as conn:
            conn.execute(
                text("ALTER TABLE ledger_entries ENABLE TRIGGER ledger_entries_no_truncate")
            )
            conn.execute(
                text(
                    "CREATE OR REPLACE FUNCTION ledger_entries_append_only() RETURNS trigger "
                    "LANGUAGE plpgsql AS $$ BEGIN RETURN OLD; END $$"
                )
            )
        with pytest.raises(ledger_guard.LedgerGuardMissing, match="trigger function"):
            create_app(settings)
        with engine.begin() as conn:
            ledger_guard.install(conn)
    engine.dispose()
    create_app(settings).state.engine.dispose()  # reinstalled: it starts again
