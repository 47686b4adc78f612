"""Pure ledger verification: chain properties, precise reasons, exports, silo cross-checks.

These run on in-memory entries sealed with the same functions the service uses; the database
versions of the tampering scenarios are in test_ledger_tamper.py.
"""

from __future__ import annotations

import hashlib
import threading
from concurrent.futures import ThreadPoolExecutor
from functools import cache
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from schemas import ledger_scan
from schemas.ledger_verify import (
    ExportError,
    ExportTruncatedError,
    SiloRecord,
    cross_check,
    directory_artifact_checker,
    export_entries,
    load_export,
    verify_chain,
)
from schemas.lineage import (
    GENESIS_HASH,
    LineageEntry,
    Statement,
    entry_signing_message,
    make_receipt,
    make_statement,
    seal_entry,
    sign_statement,
)

SERVICE = Ed25519PrivateKey.generate()
SILOS = {
    "silo:hungary": Ed25519PrivateKey.generate(),
    "silo:cleveland": Ed25519PrivateKey.generate(),
}
KEYS = {"service": SERVICE.public_key(), **{n: k.public_key() for n, k in SILOS.items()}}
MODEL_PATH = "models/run-x/v3.safetensors"
MODEL_BYTES = b"global model v3"

Signed = tuple[Statement, str | None]


def _statements(n: int) -> list[Signed]:
    """A run's worth of events: service and silo authors, unicode, None run_id, a model.

    silo:hungary writes entries 2, 6 and 8, silo:cleveland 3 and 9, the model is entry 5.
    """
    out: list[Signed] = []
    for i in range(n):
        if i == 0:
            st_ = make_statement(
                run_id=None, kind="run_started", payload={"cfg": "é\n"}, author="service"
            )
        elif i == 4:
            payload = {"path": MODEL_PATH, "sha256": hashlib.sha256(MODEL_BYTES).hexdigest()}
            st_ = make_statement(
                run_id="run-x", kind="model_saved", payload=payload, author="service"
            )
        elif i % 3:
            author = "silo:hungary" if i % 2 else "silo:cleveland"
            payload = {"digest": f"{i:064x}", "round": i, "n": 293}
            st_ = make_statement(
                run_id="run-x", kind="update_accepted", payload=payload, author=author
            )
            out.append((st_, sign_statement(SILOS[author], st_)))
            continue
        else:
            st_ = make_statement(
                run_id="run-x", kind="metrics", payload={"auc": 0.1 * i}, author="service"
            )
        out.append((st_, None))
    return out


def _seal_all(signed: list[Signed], key: Ed25519PrivateKey = SERVICE) -> list[LineageEntry]:
    entries: list[LineageEntry] = []
    prev = GENESIS_HASH
    for i, (statement, signature) in enumerate(signed):
        entry = seal_entry(
            statement,
            seq=i + 1,
            prev_hash=prev,
            created_at=f"2026-01-01T00:00:{i:02d}.000000Z",
            service_key=key,
            author_signature=signature,
        )
        entries.append(entry)
        prev = entry.entry_hash
    return entries


@cache
def _chain(n: int = 10) -> tuple[LineageEntry, ...]:
    return tuple(_seal_all(_statements(n)))


def test_valid_chain_verifies() -> None:
    report = verify_chain(list(_chain()), KEYS)
    assert report.ok and report.checked == 10 and report.head_seq == 10
    assert report.head_hash == _chain()[-1].entry_hash
    assert str(report).startswith("ledger OK: 10 entries")
    assert verify_chain([], KEYS).ok


def _mutate_text(text: str, pos: int, char: str) -> str:
    pos %= len(text)
    if text[pos] == char:
        char = "0" if char != "0" else "1"
    return text[:pos] + char + text[pos + 1 :]


_FIELDS = [f for f in LineageEntry.model_fields]
_char = st.characters(exclude_categories=("Cs",))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    index=st.integers(0, 9),
    field=st.sampled_from(_FIELDS),
    pos=st.integers(0, 500),
    char=_char,
    new_seq=st.integers(-3, 15),
)
def test_any_single_change_is_detected_at_that_entry(
    index: int, field: str, pos: int, char: str, new_seq: int
) -> None:
    entries = list(_chain())
    original = getattr(entries[index], field)
    if field == "seq":
        value: object = new_seq if new_seq != original else original + 1
    elif original is None or original == "":
        value = char
    else:
        value = _mutate_text(original, pos, char)
    entries[index] = entries[index].model_copy(update={field: value})
    report = verify_chain(entries, KEYS)
    assert not report.ok
    assert report.bad_seq == index + 1, report.reason
    assert report.head_seq == index


@settings(max_examples=300, deadline=None)
@given(line=st.integers(0, 9), pos=st.integers(0, 2000), char=_char)
def test_any_single_character_change_in_an_export_is_caught_at_its_entry(
    line: int, pos: int, char: str
) -> None:
    lines = export_entries(_chain()).split("\n")
    lines[line + 1] = _mutate_text(lines[line + 1], pos, char)
    try:
        entries = load_export("\n".join(lines))
    except ExportError as exc:
        assert f"line {line + 2} (entry {line + 1})" in str(exc) or "trailer says" in str(exc)
        return
    report = verify_chain(entries, KEYS)
    assert report.bad_seq == line + 1, report.reason


def test_missing_entry_is_named() -> None:
    entries = list(_chain())
    del entries[4]
    assert verify_chain(entries, KEYS).reason == "entry 5 missing (seq jumps 4 -> 6)"
    del entries[0]
    assert verify_chain(entries, KEYS).reason == "entry 1 missing (seq jumps 0 -> 2)"


@pytest.mark.parametrize(("a", "b"), [(4, 5), (2, 8)])
def test_reordered_entries_are_named(a: int, b: int) -> None:
    entries = list(_chain())
    entries[a], entries[b] = entries[b], entries[a]
    report = verify_chain(entries, KEYS)
    assert report.reason == f"entries {a + 1} and {b + 1} out of order"
    assert report.bad_seq == a + 1


def _renumbered_without(entries: list[LineageEntry], seq: int) -> list[LineageEntry]:
    """The ledger with entry `seq` removed and later seqs moved down (prev_hash untouched)."""
    later = [e.model_copy(update={"seq": e.seq - 1}) for e in entries[seq:]]
    return entries[: seq - 1] + later


@pytest.mark.parametrize(
    ("how", "bad_seq", "reason"),
    [
        ("duplicate", 6, "entry 5 appears twice (stored at positions 5 and 6)"),
        ("duplicate_last", 11, "entry 10 appears twice (stored at positions 10 and 11)"),
        ("same_seq", 6, "entry 5 is claimed by two entries (stored at positions 5 and 6)"),
        ("moved_to_end", 5, "entry 5 out of order (stored at position 10)"),
        (
            "renumbered",
            5,
            "entry 5 missing: the entries after 4 were renumbered (the one stored as seq 5 was "
            "written as seq 6)",
        ),
        ("seq_zero", 1, "entry 1: seq 0 is not a ledger seq (the ledger starts at 1)"),
    ],
)
def test_structural_edits_name_their_cause(how: str, bad_seq: int, reason: str) -> None:
    e = list(_chain())
    edited = {
        "duplicate": [*e[:5], e[4], *e[5:]],
        "duplicate_last": [*e, e[9]],
        "same_seq": [*e[:5], e[5].model_copy(update={"seq": 5}), *e[5:]],
        "moved_to_end": [*e[:4], *e[5:], e[4]],
        "renumbered": _renumbered_without(e, 5),
        "seq_zero": [e[0].model_copy(update={"seq": 0}), *e[1:]],
    }[how]
    report = verify_chain(edited, KEYS)
    assert (report.bad_seq, report.reason) == (bad_seq, reason)


def test_forged_silo_signature_is_named() -> None:
    signed = _statements(10)
    statement, _ = signed[7]
    assert statement.author == "silo:hungary"
    signed[7] = (statement, sign_statement(Ed25519PrivateKey.generate(), statement))
    report = verify_chain(_seal_all(signed), KEYS)
    assert report.reason == "entry 8: silo:hungary signature invalid"


def test_wrong_service_key_and_unknown_author_are_named() -> None:
    report = verify_chain(list(_chain()), {**KEYS, "service": SILOS["silo:hungary"].public_key()})
    assert report.reason == "entry 1: service signature invalid"
    keys = {k: v for k, v in KEYS.items() if k != "silo:cleveland"}
    assert verify_chain(list(_chain()), keys).reason == (
        "entry 3: no public key for silo:cleveland; pass it in public_keys to verify this entry"
    )


def _tampered(entries: list[LineageEntry], pos: int, how: str) -> list[LineageEntry]:
    out = entries[:]
    entry = out[pos]
    if how == "payload":
        out[pos] = entry.model_copy(update={"payload": entry.payload[:-1] + ',"zz":1}'})
    elif how == "service_signature":
        out[pos] = entry.model_copy(update={"service_signature": out[pos - 1].service_signature})
    elif how == "author_signature":
        # Re-hashed and re-signed by the service: only the silo's signature is wrong.
        forged = entry.model_copy(update={"author_signature": "ab" * 64})
        new_hash = forged.recompute_hash()
        out[pos] = forged.model_copy(
            update={
                "entry_hash": new_hash,
                "service_signature": SERVICE.sign(entry_signing_message(new_hash)).hex(),
            }
        )
    elif how == "delete":
        del out[pos]
    elif how == "swap":
        out[pos], out[pos + 1] = out[pos + 1], out[pos]
    return out


@pytest.mark.parametrize("workers", [3])
def test_parallel_verification_keeps_the_first_failure(
    workers: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Forked workers (and threads, while another thread runs) name what the serial scan does.

    2,500 entries (> PARALLEL_MIN_ENTRIES): problems in the parent's range and in the workers'
    ranges, several at once (the earliest wins), and every kind of problem.
    """
    entries = _seal_all(_statements(10) * 250)
    forked: list[int] = []
    real_scan_forked = ledger_scan._scan_forked
    # Threads earlier tests left running (tqdm's monitor, started by GX) count as absent, so
    # the forked path is exercised in the whole suite too; threads started here still count.
    left_running = set(threading.enumerate()) - {threading.current_thread()}
    monkeypatch.setattr(
        ledger_scan.threading,
        "active_count",
        lambda: len(set(threading.enumerate()) - left_running),
    )

    def counting_scan_forked(*args):  # type: ignore[no-untyped-def]
        forked.append(1)
        return real_scan_forked(*args)

    monkeypatch.setattr(ledger_scan, "_scan_forked", counting_scan_forked)
    assert verify_chain(entries, KEYS, workers=workers).ok
    assert forked, "a large ledger verified from a single-threaded process uses forked workers"
    # Silo-authored entries are at positions i with i % 10 in {1, 2, 5, 7, 8}.
    cases = [(2000, "payload"), (1701, "author_signature"), (40, "service_signature")]
    cases += [(2402, "delete"), (1300, "swap"), (2498, "payload")]
    for pos, how in cases:
        bad = _tampered(entries, pos, how)
        serial = verify_chain(bad, KEYS, workers=1)
        assert not serial.ok and serial.bad_seq == pos + 1, (how, serial)
        assert verify_chain(bad, KEYS, workers=workers) == serial
        before = len(forked)
        with ThreadPoolExecutor(max_workers=1) as other:
            # A second thread is alive: verification must use threads, not fork.
            assert other.submit(verify_chain, bad, KEYS, workers=workers).result() == serial
        assert len(forked) == before
    twice = _tampered(_tampered(entries, 2400, "payload"), 1999, "service_signature")
    report = verify_chain(twice, KEYS, workers=workers)
    assert report.reason == "entry 2000: service signature invalid"
    assert verify_chain(entries[:-1], KEYS, workers=workers).head_seq == len(entries) - 1
    assert len(forked) >= len(cases)


def test_replaced_model_file_is_named(tmp_path: Path) -> None:
    model = tmp_path / MODEL_PATH
    model.parent.mkdir(parents=True)
    model.write_bytes(MODEL_BYTES)
    checker = directory_artifact_checker(tmp_path)
    assert verify_chain(list(_chain()), KEYS, checker).ok
    model.write_bytes(MODEL_BYTES + b" retrained elsewhere")
    report = verify_chain(list(_chain()), KEYS, checker)
    assert report.bad_seq == 5
    assert f"artifact {MODEL_PATH} sha256 mismatch" in str(report.reason)
    model.unlink()
    assert verify_chain(list(_chain()), KEYS, checker).reason == (
        f"entry 5: artifact {MODEL_PATH} missing"
    )


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        ("[1]", "entry 1: model_saved payload is not a JSON object"),
        ('"x"', "entry 1: model_saved payload is not a JSON object"),
        (
            '{"path":"models/a\\u0000b","sha256":"00"}',
            "entry 1: model_saved path 'models/a\\x00b' holds a NUL byte (no file has it)",
        ),
    ],
)
def test_a_signed_model_saved_entry_that_names_no_file_is_a_problem(
    payload: str, reason: str, tmp_path: Path
) -> None:
    statement = Statement(run_id="run-x", kind="model_saved", payload=payload, author="service")
    entry = seal_entry(
        statement,
        seq=1,
        prev_hash=GENESIS_HASH,
        created_at="2026-01-01T00:00:00.000000Z",
        service_key=SERVICE,
    )
    report = verify_chain([entry], KEYS, directory_artifact_checker(tmp_path))
    assert (report.ok, report.bad_seq, report.reason) == (False, 1, reason)
    assert directory_artifact_checker(tmp_path)("models/a\x00b") is None


def test_artifact_paths_cannot_escape_the_store(tmp_path: Path) -> None:
    (tmp_path / "secret").write_bytes(b"x")
    checker = directory_artifact_checker(tmp_path / "store")
    assert checker("../secret") is None


def test_export_round_trip() -> None:
    text = export_entries(_chain())
    assert text.endswith("\n") and text.count("\n") == 12
    assert tuple(load_export(text)) == _chain()
    assert load_export(export_entries([])) == []


def test_export_truncated_anywhere_names_the_last_whole_entry() -> None:
    text = export_entries(_chain(4))
    line_ends = [i for i, c in enumerate(text) if c == "\n"]
    for cut in range(len(text)):
        with pytest.raises(ExportTruncatedError) as info:
            load_export(text[:cut])
        whole_lines = sum(1 for end in line_ends if end < cut)
        if whole_lines == 0:
            assert "before its header" in str(info.value)
        else:
            n = min(whole_lines - 1, 4)
            assert f"export truncated after entry {n} " in str(info.value), (cut, info.value)


def test_export_with_a_line_removed_or_edited() -> None:
    lines = export_entries(_chain()).split("\n")
    removed = "\n".join(lines[:4] + lines[5:])
    with pytest.raises(ExportTruncatedError, match="trailer says 10 entries"):
        load_export(removed)
    edited = lines[:]
    edited[3] = edited[3].replace(":", ": ", 1)
    with pytest.raises(ExportError, match=r"line 4 \(entry 3\): not canonical JSON"):
        load_export("\n".join(edited))
    with pytest.raises(ExportError, match="header"):
        load_export('{"format":"other","version":1}\n')


# ----------------------------------------------------------------------------- silo copies


def _silo_copy(entries: list[LineageEntry], author: str) -> list[SiloRecord]:
    return [
        SiloRecord(
            statement=e.statement(),
            author_signature=str(e.author_signature),
            receipt=make_receipt(e, SERVICE),
        )
        for e in entries
        if e.author == author
    ]


def test_cross_check_accepts_an_honest_service() -> None:
    entries = list(_chain())
    report = cross_check(
        _silo_copy(entries, "silo:hungary"), entries, service_public_key=KEYS["service"]
    )
    assert report.ok and report.checked == 3


def test_service_that_rewrites_and_resigns_history_is_caught_by_the_silo() -> None:
    entries = list(_chain())
    copy = _silo_copy(entries, "silo:hungary")
    signed = [(e.statement(), e.author_signature) for e in entries]
    statement, signature = signed[7]
    # The service swaps the silo's update digest and rebuilds a perfectly valid chain.
    forged = statement.model_copy(update={"payload": statement.payload.replace("7", "8", 1)})
    signed[7] = (forged, signature)
    rewritten = _seal_all(signed)
    report = cross_check(copy, rewritten, service_public_key=KEYS["service"])
    assert not report.ok
    assert report.problems[0] == (
        "entry 8 authored by silo:hungary differs from the receipted copy (payload changed): "
        "the service rewrote history"
    )
    # The silo's own signature still gives the forgery away to a plain verify as well.
    assert verify_chain(rewritten, KEYS).reason == "entry 8: silo:hungary signature invalid"


def test_cross_check_finds_dropped_forged_and_unreceipted_entries() -> None:
    entries = list(_chain())
    copy = _silo_copy(entries, "silo:hungary")
    report = cross_check(copy, entries[:7])
    assert report.problems == (
        "entry 8 authored by silo:hungary is missing from the service ledger (dropped)",
    )
    bad_receipt = copy[0].model_copy(
        update={"receipt": copy[0].receipt.model_copy(update={"signature": "00" * 64})}
    )
    report = cross_check([bad_receipt, copy[1]], entries, service_public_key=KEYS["service"])
    assert report.problems[0].startswith("silo copy of entry 2: receipt for entry 2: service")
    report = cross_check(copy[1:], entries)
    assert report.problems == (
        "entry 2 claims author silo:hungary but the silo's copy has no receipt for it (entry "
        "not submitted by the silo, or its copy is incomplete)",
    )
