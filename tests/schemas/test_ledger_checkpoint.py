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
    countersign,
    encode_countersigned,
    make_checkpoint,
    merge_checkpoints,
    parse_countersigned,
    valid_countersigners,
    verify_checkpoint,
)
from schemas.ledger_export import (
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
    report = check_anchors(entries[:6], [bare], KEYS)
    assert report.ok and report.anchors == 0 and report.unanchored == 1
    assert "no countersigned checkpoint" in str(report)
    fake = _anchor(entries[7])
    other = {**KEYS, "silo:a": Ed25519PrivateKey.generate().public_key()}
    assert check_anchors(entries[:6], [fake], other).ok  # a key that does not verify: no anchor
    assert countersignature_problems([fake], other) == [
        "checkpoint of round 2 of run r (round_closed) at height 8: countersignature of "
        "silo:a does not verify with the silo key on record (key replaced, or copy edited)"
    ]


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
