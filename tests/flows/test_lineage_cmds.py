"""`fedsilo lineage verify / show / contributions` on a real ledger written by the service code.

Tampering is done the way an attacker with the database owner's rights would: drop the
append-only triggers, then edit rows of the SQLite file; or edit the files the ledger names.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from rich.console import Console
from sqlalchemy import Connection, text
from support.lineage_sample import RUN_A, RUN_B, SILOS, Sample, build_sample

from aggregation.service import ledger
from aggregation.service.db import make_sessionmaker, transaction
from flows.lineage_cmds import (
    LineageReviewError,
    contributions,
    contributions_table,
    fetched_artifact_checker,
    load_entries_from_export,
    load_silo_checkpoints,
    parse_keys,
    show_run,
    verify,
    verify_anchors,
    verify_silo_copies,
    verify_silo_copy,
)
from schemas.ledger_checkpoint import AnchoredCheckpoint, Countersignature, make_checkpoint
from schemas.ledger_export import ExportError, ExportTruncatedError, export_entries
from schemas.lineage import (
    GENESIS_HASH,
    LineageEntry,
    make_receipt,
    make_statement,
    seal_entry,
    sign_statement,
)
from silos.lineage_copy import keep_receipt, load_records, records_path


@pytest.fixture
def sample(tmp_path: Path) -> Sample:
    return build_sample(tmp_path)


def _plain(renderable: object) -> str:
    console = Console(record=True, width=400, color_system=None)
    console.print(renderable)
    return console.export_text()


def _drop_guard(conn: Connection) -> None:
    """What an attacker with the owner's rights does first (SQLite triggers)."""
    conn.execute(text("DROP TRIGGER ledger_entries_no_update"))
    conn.execute(text("DROP TRIGGER ledger_entries_no_delete"))


def _seq(entries: list[LineageEntry], kind: str, run_id: str, nth: int = 0) -> int:
    return [e.seq for e in entries if e.kind == kind and e.run_id == run_id][nth]


def _verify_text(sample: Sample, artifacts: bool = True) -> tuple[bool, str]:
    ok, shown = verify(sample.entries(), sample.keys, sample.store if artifacts else None)
    return ok, _plain(shown)


def test_an_untouched_ledger_verifies_with_every_artifact(sample: Sample) -> None:
    ok, shown = _verify_text(sample)
    entries = sample.entries()
    assert ok
    assert f"ledger OK: {len(entries)} entries, head {entries[-1].seq}" in shown
    assert "6 model artifacts match their sha256" in shown
    ok, shown = _verify_text(sample, artifacts=False)
    assert ok and "6 model artifacts NOT checked" in shown


def test_one_payload_byte_changed_in_the_database(sample: Sample) -> None:
    seq = _seq(sample.entries(), "metrics", RUN_A, nth=1)
    with sample.engine.begin() as conn:
        _drop_guard(conn)
        payload = conn.execute(
            text("SELECT payload FROM ledger_entries WHERE seq = :s"), {"s": seq}
        )
        before = payload.scalar_one()
        after = before.replace('"accuracy":0.67,', '"accuracy":0.97,', 1)
        assert after != before and len(after) == len(before)
        conn.execute(
            text("UPDATE ledger_entries SET payload = :p WHERE seq = :s"), {"p": after, "s": seq}
        )
    ok, shown = _verify_text(sample)
    assert not ok
    assert (
        f"ledger INVALID at entry {seq}: entry {seq}: entry_hash mismatch (content altered)"
        in shown
    )
    assert f"entry {seq} is a metrics entry (run {RUN_A}) by service" in shown
    assert f"entries 1..{seq - 1} verified" in shown


def test_an_entry_deleted(sample: Sample) -> None:
    seq = _seq(sample.entries(), "update_rejected", RUN_A)
    with sample.engine.begin() as conn:
        _drop_guard(conn)
        conn.execute(text("DELETE FROM ledger_entries WHERE seq = :s"), {"s": seq})
    ok, shown = _verify_text(sample)
    assert not ok
    assert (
        f"ledger INVALID at entry {seq}: entry {seq} missing (seq jumps {seq - 1} -> {seq + 1})"
        in shown
    )


def test_two_entries_reordered(sample: Sample) -> None:
    seq = _seq(sample.entries(), "dropout", RUN_A)
    with sample.engine.begin() as conn:
        _drop_guard(conn)
        conn.execute(text("UPDATE ledger_entries SET seq = -1 WHERE seq = :s"), {"s": seq})
        conn.execute(
            text("UPDATE ledger_entries SET seq = :s WHERE seq = :t"), {"s": seq, "t": seq + 1}
        )
        conn.execute(text("UPDATE ledger_entries SET seq = :t WHERE seq = -1"), {"t": seq + 1})
    ok, shown = _verify_text(sample)
    assert not ok
    assert (
        f"entries {seq} and {seq + 1} out of order (the entry stored as seq {seq} was written "
        f"as seq {seq + 1})"
    ) in shown


def test_a_model_file_replaced_on_disk(sample: Sample) -> None:
    seq = _seq(sample.entries(), "model_saved", RUN_A, nth=3)
    path = "models/run-a/v3.safetensors"
    original = (sample.store / path).read_bytes()
    (sample.store / path).write_bytes(original[:-4] + b"\x00\x00\x80\x3f")
    ok, shown = _verify_text(sample)
    assert not ok
    recorded = sample.models[(RUN_A, 3)][:12]
    assert (
        f"ledger INVALID at entry {seq}: entry {seq}: artifact {path} sha256 mismatch (ledger "
        f"{recorded}..., file "
    ) in shown
    assert "file replaced or altered" in shown
    # Without the workspace the chain itself is still intact.
    assert _verify_text(sample, artifacts=False)[0]
    (sample.store / path).unlink()
    assert f"entry {seq}: artifact {path} missing" in _verify_text(sample)[1]


def test_a_forged_silo_signature_is_named_and_the_silo_copy_disowns_it(sample: Sample) -> None:
    statement = make_statement(
        run_id=RUN_A,
        kind="privacy_spent",
        payload={"silo": "hungary", "round": 3, "epsilon": 0.01, "delta": 1e-5},
        author="silo:hungary",
    )
    forged = sign_statement(Ed25519PrivateKey.generate(), statement)
    with transaction(make_sessionmaker(sample.engine)) as session:
        entry = ledger.append(
            session,
            kind=statement.kind,
            payload=statement.payload,
            run_id=RUN_A,
            author="silo:hungary",
            service_key=sample.private["service"],
            author_signature=forged,
        )
    ok, shown = _verify_text(sample)
    assert not ok
    assert (
        f"ledger INVALID at entry {entry.seq}: entry {entry.seq}: silo:hungary signature invalid"
        in shown
    )
    ok, copy = verify_silo_copy(sample.silo_dirs["hungary"], sample.entries(), sample.keys)
    assert not ok
    assert (
        f"entry {entry.seq} claims author silo:hungary but the silo's copy has no receipt for it"
    ) in _plain(copy)


def test_an_export_round_trips_and_truncation_is_named(sample: Sample, tmp_path: Path) -> None:
    entries = sample.entries()
    export = tmp_path / "ledger.jsonl"
    export.write_text(export_entries(entries), encoding="utf-8")
    assert load_entries_from_export(export) == entries
    assert verify(load_entries_from_export(export), sample.keys, sample.store)[0]

    data = export.read_bytes()
    cut = data[: len(data) // 2]
    export.write_bytes(cut)
    whole = cut.count(b"\n") - 1  # minus the header line
    with pytest.raises(ExportTruncatedError) as info:
        load_entries_from_export(export)
    assert str(info.value) == f"{export}: export truncated after entry {whole} (partial last line)"

    lines = data.split(b"\n")
    export.write_bytes(b"\n".join(lines[:11]) + b"\n")  # header + 10 entries, no trailer
    with pytest.raises(ExportTruncatedError, match=r"truncated after entry 10 \(no trailer\)$"):
        load_entries_from_export(export)


def test_an_export_cut_inside_a_multibyte_character(sample: Sample, tmp_path: Path) -> None:
    data = export_entries(sample.entries()).encode("utf-8")
    dash = data.index("—".encode())  # in run-b's failure reason: three bytes in UTF-8
    export = tmp_path / "cut.jsonl"
    export.write_bytes(data[: dash + 1])
    whole = data[:dash].count(b"\n") - 1
    with pytest.raises(ExportTruncatedError) as info:
        load_entries_from_export(export)
    assert str(info.value) == f"{export}: export truncated after entry {whole} (partial last line)"
    export.write_bytes(data[:dash] + b"\xff" + data[dash + 3 :])
    with pytest.raises(ExportError, match=rf"byte {dash} is not UTF-8"):
        load_entries_from_export(export)
    with pytest.raises(LineageReviewError, match="cannot read ledger export"):
        load_entries_from_export(tmp_path / "absent.jsonl")


def test_every_silo_copy_matches_and_a_dropped_entry_is_noticed(sample: Sample) -> None:
    entries = sample.entries()
    for silo in SILOS:
        ok, shown = verify_silo_copy(sample.silo_dirs[silo], entries, sample.keys)
        assert ok, _plain(shown)
        assert f"silo:{silo}: silo copy OK" in _plain(shown)
    # A service that serves a ledger without hungary's last entry (rolled back history).
    last = max(e.seq for e in entries if e.author == "silo:hungary")
    ok, shown = verify_silo_copy(
        sample.silo_dirs["hungary"], [e for e in entries if e.seq != last], sample.keys
    )
    assert not ok
    assert (
        f"entry {last} authored by silo:hungary is missing from the service ledger (dropped)"
        in _plain(shown)
    )


def test_a_damaged_silo_copy_names_its_line(sample: Sample) -> None:
    records = sample.silo_dirs["cleveland"] / "lineage" / "records.jsonl"
    lines = records.read_text(encoding="utf-8").splitlines(keepends=True)
    records.write_text("".join(lines[:3]) + lines[3][:40], encoding="utf-8")
    with pytest.raises(LineageReviewError, match=rf"{records} line 4 is not a silo lineage"):
        verify_silo_copy(records, sample.entries(), sample.keys)


def test_show_run_lists_the_run_in_order(sample: Sample) -> None:
    entries = sample.entries()
    table = show_run(entries, RUN_A)
    assert table.row_count == sum(1 for e in entries if e.run_id == RUN_A)
    shown = _plain(table)
    assert f"run {RUN_A}: finished, silos cleveland, hungary, switzerland" in shown
    assert "switzerland round 1: heart_disease v1 FAIL, 123 rows" in shown
    assert "expect_column_values_to_be_between(chol)" in shown
    assert "round 2: v2 from cleveland, switzerland (secure aggregation)" in shown
    assert "switzerland round 3: HTTP 409 statement signed for round 2 replayed" in shown
    assert f"finished: final v3 {sample.models[(RUN_A, 3)][:12]}" in shown
    assert RUN_B not in shown
    assert "run failed" not in shown
    assert "failed:" in _plain(show_run(entries, RUN_B))
    with pytest.raises(LineageReviewError, match=r"run 'run-z' has no entries .*run-a, run-b"):
        show_run(entries, "run-z")


def test_contributions_follow_the_aggregates(sample: Sample) -> None:
    entries = sample.entries()

    def listed(silo: str) -> list[tuple[str, int, tuple[int, ...]]]:
        return [(c.run_id, c.model_version, c.via_rounds) for c in contributions(entries, silo)]

    assert listed("cleveland") == [
        (RUN_A, 1, (1,)),
        (RUN_A, 2, (1, 2)),
        (RUN_A, 3, (1, 2, 3)),
        (RUN_B, 1, (1,)),
    ]
    # hungary dropped in round 2 of run-a and in run-b's only round: its updates there were
    # accepted but are not in those aggregates.
    assert listed("silo:hungary") == [(RUN_A, 1, (1,)), (RUN_A, 2, (1,)), (RUN_A, 3, (1, 3))]
    # switzerland failed validation in round 1 and was rejected in round 3.
    assert listed("switzerland") == [(RUN_A, 2, (2,)), (RUN_A, 3, (2,))]
    assert listed("basel") == []
    rows = contributions(entries, "switzerland")
    assert [r.sha256 for r in rows] == [sample.models[(RUN_A, 2)], sample.models[(RUN_A, 3)]]
    assert [r.path for r in rows] == ["models/run-a/v2.safetensors", "models/run-a/v3.safetensors"]
    shown = _plain(contributions_table(rows, "switzerland"))
    assert "models that silo:switzerland's data contributed to (2)" in shown
    assert sample.models[(RUN_A, 3)] in shown


def test_artifacts_fetched_from_the_service_are_hashed(sample: Sample) -> None:
    entries = sample.entries()
    fetched: list[tuple[str, int]] = []

    def fetch(run_id: str, version: int) -> bytes | None:
        fetched.append((run_id, version))
        path = sample.store / "models" / run_id / f"v{version}.safetensors"
        return path.read_bytes() if path.exists() else None

    ok, _ = verify(entries, sample.keys, artifact_checker=fetched_artifact_checker(entries, fetch))
    assert ok and sorted(fetched) == sorted(sample.models)

    def stale(run_id: str, version: int) -> bytes | None:
        return b"another model" if (run_id, version) == (RUN_B, 1) else fetch(run_id, version)

    ok, shown = verify(
        entries, sample.keys, artifact_checker=fetched_artifact_checker(entries, stale)
    )
    seq = _seq(entries, "model_saved", RUN_B, nth=1)
    wrong = hashlib.sha256(b"another model").hexdigest()[:12]
    assert (
        not ok
        and f"entry {seq}: artifact models/run-b/v1.safetensors sha256 mismatch" in _plain(shown)
    )
    assert f"file {wrong}..." in _plain(shown)


def test_malformed_and_missing_keys(sample: Sample) -> None:
    with pytest.raises(LineageReviewError, match="public key of silo:hungary is not a raw Ed25519"):
        parse_keys({**sample.keys, "silo:hungary": "zz" * 32})
    keys = {k: v for k, v in sample.keys.items() if k != "silo:cleveland"}
    ok, shown = verify(sample.entries(), keys)
    first = min(e.seq for e in sample.entries() if e.author == "silo:cleveland")
    assert not ok
    assert f"entry {first}: no public key for silo:cleveland" in _plain(shown)


def test_a_damaged_checkpoint_copy_names_its_line_and_a_missing_one_is_empty(
    sample: Sample,
) -> None:
    workspace = sample.silo_dirs["cleveland"]
    assert load_silo_checkpoints(workspace) == []  # an agent that never countersigned
    path = workspace / "lineage" / "checkpoints.jsonl"
    path.write_text('{"checkpoint":{"height":3}}\n', encoding="utf-8")
    with pytest.raises(LineageReviewError, match=rf"{path} line 1 is not a countersigned"):
        load_silo_checkpoints(workspace)
    ok, shown, _ = verify_silo_copies([workspace], sample.entries(), sample.keys)
    assert not ok and "silo copy unreadable" in _plain(shown[0])


def test_verify_anchors_without_checkpoints_says_what_is_not_covered(sample: Sample) -> None:
    ok, shown = verify_anchors(sample.entries(), sample.keys)
    assert ok and "no countersigned checkpoint given" in _plain(shown)


def test_a_payload_with_unicode_line_separators_reads_back_whole(tmp_path: Path) -> None:
    """Canonical JSON keeps U+2028 and U+0085 raw; only "\\n" ends a line of a silo's copy."""
    service, silo = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    statement = make_statement(
        run_id="r", kind="update_accepted", payload={"note": "col\u2028name\x85x"}, author="silo:a"
    )
    signature = sign_statement(silo, statement)
    entry = seal_entry(
        statement,
        seq=1,
        prev_hash=GENESIS_HASH,
        created_at="2026-01-01T00:00:00.000000Z",
        service_key=service,
        author_signature=signature,
    )
    answer = {
        "statement": statement.model_dump(),
        "author_signature": signature,
        "receipt": make_receipt(entry, service).model_dump(),
    }
    kept = keep_receipt(tmp_path, answer)
    assert "\u2028" in records_path(tmp_path).read_text(encoding="utf-8")  # raw, not escaped
    assert load_records(tmp_path) == [kept]
    keys = {"service": service, "silo:a": silo}
    hex_keys = {owner: k.public_key().public_bytes_raw().hex() for owner, k in keys.items()}
    ok, shown = verify_silo_copy(tmp_path, [entry], hex_keys)
    assert ok and "silo copy OK: 1 receipted entries match" in _plain(shown)
    checkpoint = make_checkpoint(
        service,
        height=1,
        head_hash=entry.entry_hash,
        run_id="r\u2028s",
        round=1,
        event="round_closed",
    )
    anchored = AnchoredCheckpoint(checkpoint=checkpoint)
    (tmp_path / "lineage" / "checkpoints.jsonl").write_text(
        anchored.model_dump_json() + "\n", encoding="utf-8"
    )
    assert load_silo_checkpoints(tmp_path) == [anchored]


def test_a_checkpoint_copy_that_is_not_utf8_names_its_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "lineage" / "checkpoints.jsonl"
    path.parent.mkdir()
    path.write_bytes(b'{"checkpoint":{}}\n{"x":"\xff"}\n')
    with pytest.raises(LineageReviewError) as info:
        load_silo_checkpoints(tmp_path)
    assert str(info.value).startswith(f"{path} line 2 is not UTF-8 (byte 24: invalid start byte)")


def test_an_empty_silo_copy_is_a_warning_not_ok(sample: Sample, tmp_path: Path) -> None:
    empty = tmp_path / "records.jsonl"
    empty.write_text("", encoding="utf-8")
    ok, shown = verify_silo_copy(empty, sample.entries(), sample.keys)
    assert ok  # nothing contradicts the ledger ...
    text = _plain(shown)
    assert "silo copy holds no receipted entries: nothing of it was cross-checked" in text
    assert "OK" not in text  # ... but nothing vouches for it either


def test_an_export_cut_below_a_service_signed_checkpoint_is_caught(sample: Sample) -> None:
    """Cut by someone without the service key: the newest checkpoint, not yet countersigned
    (or its countersignature garbled), still names the removed entries."""
    entries = sample.entries()
    checkpoint = make_checkpoint(
        sample.private["service"],
        height=entries[-1].seq,
        head_hash=entries[-1].entry_hash,
        run_id=RUN_B,
        round=None,
        event="run_failed",
    )
    garbled = Countersignature(silo="silo:hungary", signature="11" * 64)
    newest = AnchoredCheckpoint(checkpoint=checkpoint, countersignatures=(garbled,))
    ok, shown = verify_anchors(entries[:-2], sample.keys, export_checkpoints=[newest])
    text = " ".join(_plain(shown).split())
    assert not ok
    assert (
        f"checkpoint of the end of run {RUN_B} (run_failed) at height {entries[-1].seq}: "
        "countersignature of silo:hungary does not verify with the silo key on record (key "
        "replaced, or export edited)"
    ) in text
    assert (
        f"ledger ends at seq {entries[-3].seq} but checkpoint of the end of run {RUN_B} "
        f"(run_failed) signed by the service alone says height {entries[-1].seq}"
    ) in text
