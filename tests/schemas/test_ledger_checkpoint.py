"""Ledger checkpoints: signatures, countersignatures, the v2 export, anchoring a ledger."""

from __future__ import annotations

from urllib.parse import quote

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given
from hypothesis import strategies as st

from schemas.ledger_anchor import check_anchors, countersignature_problems
from schemas.ledger_checkpoint import (
    MAX_COUNTERSIGNED_PER_POLL,
    AnchoredCheckpoint,
    Countersignature,
    countersign,
    encode_countersigned,
    make_checkpoint,
    merge_checkpoints,
    parse_countersigned,
    valid_countersigners,
    verify_checkpoint,
)
from schemas.ledger_export import (
    ExportError,
    ExportFormatError,
    ExportTruncatedError,
    export_entries,
    load_export,
    load_ledger_export,
)
from schemas.lineage import (
    GENESIS_HASH,
    LineageEntry,
    LineageSignatureError,
    entry_signing_message,
    make_statement,
    seal_entry,
)

SERVICE = Ed25519PrivateKey.generate()
SILO = Ed25519PrivateKey.generate()
KEYS = {"service": SERVICE.public_key(), "silo:a": SILO.public_key()}


def _chain(n: int = 8) -> list[LineageEntry]:
    entries, prev = [], GENESIS_HASH
    for seq in range(1, n + 1):
        statement = make_statement(
            run_id="r", kind="metrics", payload={"round": seq, "auc": 0.5}, author="service"
        )
        entry = seal_entry(
            statement,
            seq=seq,
            prev_hash=prev,
            created_at="2026-12-03T14:00:00.000000Z",
            service_key=SERVICE,
        )
        entries.append(entry)
        prev = entry.entry_hash
    return entries


def _anchor(entry: LineageEntry, round_: int | None = 2) -> AnchoredCheckpoint:
    cp = make_checkpoint(
        SERVICE,
        height=entry.seq,
        head_hash=entry.entry_hash,
        run_id="r",
        round=round_,
        event="round_closed",
    )
    return AnchoredCheckpoint(checkpoint=cp, countersignatures=(countersign(cp, "silo:a", SILO),))


def test_checkpoint_signatures_verify_and_detect_changes() -> None:
    anchored = _anchor(_chain()[3])
    verify_checkpoint(anchored.checkpoint, SERVICE.public_key())
    assert valid_countersigners(anchored, KEYS) == (["silo:a"], [])
    moved = anchored.checkpoint.model_copy(update={"height": 3})
    with pytest.raises(LineageSignatureError, match="service signature invalid"):
        verify_checkpoint(moved, SERVICE.public_key())
    forged = AnchoredCheckpoint(checkpoint=moved, countersignatures=anchored.countersignatures)
    assert valid_countersigners(forged, KEYS) == ([], ["silo:a"])


def test_anchors_name_truncation_and_rewrite() -> None:
    entries = _chain()
    anchors = [_anchor(entries[3], 1), _anchor(entries[7], 2)]
    assert check_anchors(entries, anchors, KEYS).ok
    cut = check_anchors(entries[:6], anchors, KEYS)
    assert cut.problems == (
        f"ledger ends at seq 6 but checkpoint of round 2 of run r (round_closed) countersigned "
        f"by silo:a says height 8 with head {entries[7].entry_hash}: entries 7..8 (at least) "
        "were removed",
    )
    # Rewrite entry 6 and re-sign everything after it with the service key.
    rewritten, prev = list(entries[:5]), entries[4].entry_hash
    for entry in entries[5:]:
        payload = (
            entry.payload.replace('"auc":0.5', '"auc":0.9') if entry.seq == 6 else entry.payload
        )
        redone = entry.model_copy(update={"payload": payload, "prev_hash": prev})
        new_hash = redone.recompute_hash()
        sig = SERVICE.sign(entry_signing_message(new_hash)).hex()
        rewritten.append(
            redone.model_copy(update={"entry_hash": new_hash, "service_signature": sig})
        )
        prev = new_hash
    report = check_anchors(rewritten, anchors, KEYS)
    assert len(report.problems) == 1
    assert report.problems[0].startswith(
        "entry 8's hash differs from the checkpoint of round 2 of run r (round_closed) "
        "countersigned by silo:a"
    )
    assert "an entry in 5..8 was rewritten" in report.problems[0]


def test_only_silo_countersignatures_anchor() -> None:
    entries = _chain()
    bare = AnchoredCheckpoint(checkpoint=_anchor(entries[7]).checkpoint)  # service-signed only
    silo_keys = {"silo:a": KEYS["silo:a"]}  # without the service key it proves nothing
    report = check_anchors(entries[:6], [bare], silo_keys)
    assert report.ok and report.anchors == 0 and report.unanchored == 1
    assert "no countersigned checkpoint" in str(report)
    fake = _anchor(entries[7])
    other = {"silo:a": Ed25519PrivateKey.generate().public_key()}
    assert check_anchors(entries[:6], [fake], other).ok  # a key that does not verify: no anchor
    assert countersignature_problems([fake], other) == [
        "checkpoint of round 2 of run r (round_closed) at height 8: countersignature of "
        "silo:a does not verify with the silo key on record (key replaced, or copy edited)"
    ]


def test_a_service_countersignature_or_one_that_fails_does_not_anchor_nor_get_named() -> None:
    entries = _chain()
    anchored = _anchor(entries[7])
    cp = anchored.checkpoint
    forged = (
        countersign(cp, "service", SERVICE),  # verifies with KEYS["service"], but no silo's
        Countersignature(silo="silo:b", signature="00" * 64),
    )
    fake = AnchoredCheckpoint(checkpoint=cp, countersignatures=forged)
    assert valid_countersigners(fake, KEYS) == ([], ["service", "silo:b"])
    assert check_anchors(entries, [fake], KEYS).anchors == 0
    assert countersignature_problems([fake], KEYS, source="export") == [
        "checkpoint of round 2 of run r (round_closed) at height 8: countersignature of silo:b "
        "does not verify with the silo key on record (key replaced, or export edited)",
        "checkpoint of round 2 of run r (round_closed) at height 8: countersigned by service, "
        "which is not a silo (only silos countersign; export forged or edited)",
    ]
    mixed = AnchoredCheckpoint(checkpoint=cp, countersignatures=anchored.countersignatures + forged)
    report = check_anchors(entries, [mixed], KEYS)
    assert report.anchors == 1
    assert str(report) == (
        "anchors OK: 1 countersigned checkpoints match the ledger (highest: height 8, "
        "checkpoint of round 2 of run r (round_closed), countersigned by silo:a)"
    )


def test_a_service_signed_checkpoint_the_ledger_contradicts_is_a_problem() -> None:
    """With the service key on record, a checkpoint nobody countersigned still gives away a
    ledger cut or rewritten by someone without that key, and one it did not sign is foreign."""
    entries = _chain()
    newest = AnchoredCheckpoint(checkpoint=_anchor(entries[7], 3).checkpoint)
    report = check_anchors(entries[:6], [_anchor(entries[3], 1), newest], KEYS)
    assert report.problems == (
        "ledger ends at seq 6 but checkpoint of round 3 of run r (round_closed) signed by the "
        f"service alone says height 8 with head {entries[7].entry_hash}: entries 7..8 (at "
        "least) were removed",
    )
    rewritten = [*entries[:5], entries[5].model_copy(update={"entry_hash": "cd" * 32})]
    at_six = AnchoredCheckpoint(checkpoint=_anchor(entries[5]).checkpoint)
    assert (
        check_anchors(rewritten, [at_six], KEYS)
        .problems[0]
        .startswith(
            "entry 6's hash differs from the checkpoint of round 2 of run r (round_closed) signed "
            "by the service alone"
        )
    )
    staging = Ed25519PrivateKey.generate()
    cp = make_checkpoint(
        staging, height=4, head_hash="ab" * 32, run_id="s", round=1, event="round_closed"
    )
    foreign = AnchoredCheckpoint(
        checkpoint=cp, countersignatures=(countersign(cp, "silo:a", SILO),)
    )
    assert check_anchors(entries, [foreign], KEYS).problems == (
        "checkpoint of round 1 of run s (round_closed) at height 4: not signed by this "
        "ledger's service key (forged, or a checkpoint of another ledger)",
    )


def test_anchors_ok_names_the_entries_past_the_highest_anchor() -> None:
    entries = _chain()
    assert str(check_anchors(entries, [_anchor(entries[3])], KEYS)).endswith(
        "countersigned by silo:a); entries 5..8 after it not covered by any anchor"
    )
    assert str(check_anchors(entries, [_anchor(entries[6])], KEYS)).endswith(
        "countersigned by silo:a); entry 8 after it not covered by any anchor"
    )
    assert str(check_anchors(entries, [_anchor(entries[7])], KEYS)).endswith(
        "countersigned by silo:a)"
    )


def test_merge_pools_countersignatures() -> None:
    entries = _chain()
    a = _anchor(entries[7])
    other = Ed25519PrivateKey.generate()
    b = AnchoredCheckpoint(
        checkpoint=a.checkpoint, countersignatures=(countersign(a.checkpoint, "silo:b", other),)
    )
    merged = merge_checkpoints([[a], [b, a]])
    assert len(merged) == 1
    assert {c.silo for c in merged[0].countersignatures} == {"silo:a", "silo:b"}


def test_export_v2_round_trips_and_v1_is_still_read() -> None:
    entries = _chain()
    anchors = [_anchor(entries[3]), _anchor(entries[7])]
    text = export_entries(entries, anchors)
    book = load_ledger_export(text)
    assert book.version == 2 and book.entries == entries and book.checkpoints == anchors
    assert load_export(text) == entries
    lines = text.split("\n")
    dropped = "\n".join(lines[:-3] + lines[-2:])  # one checkpoint line removed
    with pytest.raises(ExportTruncatedError, match="trailer says 2 checkpoints"):
        load_ledger_export(dropped)
    v1 = export_entries(entries).split("\n")
    v1[0] = '{"format":"fedsilo-ledger-export","version":1}'
    v1[-2] = v1[-2].replace('"checkpoints":0,', "")
    old = load_ledger_export("\n".join(v1))
    assert old.version == 1 and old.entries == entries and old.checkpoints == []


@pytest.mark.parametrize(
    ("index", "old", "new", "error"),
    [
        (1, '"seq":1,', '"seq":"1",', r"line 2 \(entry 1\): not a valid entry: seq: Input"),
        (2, '"seq":2,', '"seq":2.0,', r"line 3 \(entry 2\): not a valid entry: seq: Input"),
        (1, '"seq":1,', '"seq":true,', r"line 2 \(entry 1\): not a valid entry: seq: Input"),
        (9, '"height":4,', '"height":"4",', r"line 10 \(checkpoint 1\): not a valid checkpoint"),
        (10, '"round":2,', '"round":2.0,', r"line 11 \(checkpoint 2\): .*checkpoint\.round"),
        (0, '"version":2', '"version":2.0', r"line 1 is not a fedsilo-ledger-export v2 header"),
    ],
)
def test_an_edit_that_only_changes_a_type_is_refused(
    index: int, old: str, new: str, error: str
) -> None:
    """Each edit is canonical JSON and read leniently would give back the same ledger."""
    entries = _chain()
    lines = export_entries(entries, [_anchor(entries[3]), _anchor(entries[7])]).split("\n")
    assert old in lines[index]
    lines[index] = lines[index].replace(old, new)
    with pytest.raises(ExportError, match=error):
        load_ledger_export("\n".join(lines))


def test_a_bad_checkpoint_line_and_crlf_endings_are_named() -> None:
    entries = _chain(2)
    lines = export_entries(entries, [_anchor(entries[1])]).split("\n")
    bad = lines[:]
    bad[3] = bad[3].replace('"event":"round_closed",', "")
    with pytest.raises(ExportError, match=r"^line 4 \(checkpoint 1\): not a valid checkpoint: "):
        load_ledger_export("\n".join(bad))
    with pytest.raises(ExportError, match=r"^line 1: ends in a carriage return \(CRLF line"):
        load_ledger_export("\r\n".join(lines))


@pytest.mark.parametrize(
    ("trailer", "problem"),
    [
        ('{"trailer":5}', "5, not an object"),
        ('{"trailer":[1,2]}', "[1,2], not an object"),
        ('{"trailer":"x"}', '"x", not an object'),
        ('{"trailer":null}', "null, not an object"),
        ('{"trailer":{"checkpoints":0,"count":2,"head_seq":2}}', "head_hash: Field required"),
        ("", "extra: Extra inputs are not permitted"),
        ("", "keys beside 'trailer'"),
    ],
)
def test_a_malformed_trailer_is_named_as_such(trailer: str, problem: str) -> None:
    entries = _chain(2)
    lines = export_entries(entries).split("\n")
    if "extra" in problem:
        trailer = lines[-2].replace('"count":2,', '"count":2,"extra":1,')
    elif "beside" in problem:
        trailer = lines[-2][:-1] + ',"wait":1}'  # "wait" sorts after "trailer"
    lines[-2] = trailer
    with pytest.raises(ExportFormatError) as info:
        load_ledger_export("\n".join(lines))
    assert str(info.value).startswith(
        "line 4 (trailer): not a version 2 trailer {checkpoints, count, head_hash, head_seq} "
        f"({problem}); "
    )


# --- countersignatures on the task poll (``?countersigned=``) ---------------------------------

_HEX = st.text(alphabet="0123456789abcdef", min_size=128, max_size=128)


@given(
    st.lists(
        st.tuples(st.integers(1, 2**31 - 1), _HEX),
        min_size=1,
        max_size=MAX_COUNTERSIGNED_PER_POLL,
        unique_by=lambda pair: pair[0],
    )
)
def test_countersigned_parameter_round_trips_in_unreserved_url_characters(
    pairs: list[tuple[int, str]],
) -> None:
    text = encode_countersigned(pairs)
    assert parse_countersigned(text) == pairs
    assert quote(text, safe="") == text  # the path the silo signs is the one the service reads


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("5." + "a" * 127, r"countersignature 1 is not"),
        ("5." + "A" * 128, r"countersignature 1 is not"),
        ("0." + "a" * 128, r"countersignature 1 is not"),
        ("5." + "a" * 128 + "_x", r"countersignature 2 is not"),
        ("5." + "a" * 128 + "_5." + "b" * 128, r"height repeats"),
        (f"{2**31}." + "a" * 128, r"height 2147483648 is past"),
        ("_".join(f"{h}." + "a" * 128 for h in range(1, 18)), r"17 countersignatures"),
    ],
)
def test_a_bad_countersigned_parameter_is_refused_naming_the_item(text: str, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        parse_countersigned(text)


def test_a_poll_carries_one_to_sixteen_countersignatures() -> None:
    with pytest.raises(ValueError, match="a poll carries 1 to 16"):
        encode_countersigned([])
    with pytest.raises(ValueError, match="128 hex digits"):
        encode_countersigned([(3, "zz")])
