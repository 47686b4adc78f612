"""Entry hashes, statements, service signatures and receipts of the lineage ledger."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from schemas import lineage_crypto
from schemas.lineage import (
    GENESIS_HASH,
    CanonicalJsonError,
    LineageError,
    LineageSignatureError,
    compute_entry_hash,
    entry_signing_message,
    make_receipt,
    make_statement,
    seal_entry,
    sign_statement,
    statement_message,
    verify_receipt,
    verify_signature,
)

BASE = {
    "seq": 1,
    "run_id": "run-1",
    "kind": "metrics",
    "payload": '{"auc":0.8}',
    "prev_hash": GENESIS_HASH,
    "author": "service",
    "created_at": "2026-01-01T00:00:00.000000Z",
    "author_signature": None,
}


def test_entry_hash_is_deterministic_and_covers_every_field() -> None:
    reference = compute_entry_hash(**BASE)
    assert reference == compute_entry_hash(**BASE)
    assert len(reference) == 64
    changes = {
        "seq": 2,
        "run_id": None,
        "kind": "aggregate",
        "payload": '{"auc":0.9}',
        "prev_hash": "1" * 64,
        "author": "silo:a",
        "created_at": "2026-01-01T00:00:00.000001Z",
        "author_signature": "00" * 64,
    }
    for field, value in changes.items():
        assert compute_entry_hash(**{**BASE, field: value}) != reference, field


def test_field_boundaries_cannot_shift() -> None:
    # Without length prefixes "ab"+"c" and "a"+"bc" would hash alike.
    one = compute_entry_hash(**{**BASE, "kind": "ab", "payload": "c"})
    two = compute_entry_hash(**{**BASE, "kind": "a", "payload": "bc"})
    assert one != two
    # None and the empty string are different values.
    assert compute_entry_hash(**{**BASE, "run_id": ""}) != compute_entry_hash(**BASE)


def test_statement_is_signed_before_the_service_places_it() -> None:
    silo = Ed25519PrivateKey.generate()
    service = Ed25519PrivateKey.generate()
    statement = make_statement(
        run_id="run-1", kind="update_accepted", payload={"digest": "ab"}, author="silo:hungary"
    )
    signature = sign_statement(silo, statement)
    entry = seal_entry(
        statement,
        seq=7,
        prev_hash="f" * 64,
        created_at="2026-01-01T00:00:00.000000Z",
        service_key=service,
        author_signature=signature,
    )
    assert entry.recompute_hash() == entry.entry_hash
    assert verify_signature(silo.public_key(), entry.author_signature, entry.statement().message())
    assert verify_signature(
        service.public_key(), entry.service_signature, entry_signing_message(entry.entry_hash)
    )
    # Domains keep a statement signature from passing as an entry signature and vice versa.
    assert not verify_signature(
        silo.public_key(), signature, entry_signing_message(entry.entry_hash)
    )
    assert not verify_signature(
        silo.public_key(), signature.upper(), statement_message(**statement.model_dump())
    )


def test_seal_refuses_missing_or_superfluous_author_signatures() -> None:
    service = Ed25519PrivateKey.generate()
    place = {"seq": 1, "prev_hash": GENESIS_HASH, "created_at": "t", "service_key": service}
    silo_statement = make_statement(run_id=None, kind="dropout", payload={}, author="silo:x")
    with pytest.raises(LineageError, match="needs the silo's author_signature"):
        seal_entry(silo_statement, **place)
    service_statement = make_statement(run_id=None, kind="dropout", payload={}, author="service")
    with pytest.raises(LineageError, match="must not carry one"):
        seal_entry(service_statement, **place, author_signature="00" * 64)


def test_make_statement_checks_author_and_payload() -> None:
    with pytest.raises(LineageError, match="is not 'service' or 'silo:<name>'"):
        make_statement(run_id=None, kind="metrics", payload={}, author="hospital")
    with pytest.raises(CanonicalJsonError, match="canonical JSON object"):
        make_statement(run_id=None, kind="metrics", payload='{"b":1, "a":2}', author="service")
    with pytest.raises(CanonicalJsonError, match="canonical JSON object"):
        make_statement(run_id=None, kind="metrics", payload="[1]", author="service")


def test_receipt_proves_what_the_service_acknowledged() -> None:
    silo = Ed25519PrivateKey.generate()
    service = Ed25519PrivateKey.generate()
    statement = make_statement(
        run_id="r", kind="privacy_spent", payload={"eps": 0.5}, author="silo:a"
    )
    signature = sign_statement(silo, statement)
    entry = seal_entry(
        statement,
        seq=3,
        prev_hash="e" * 64,
        created_at="2026-01-01T00:00:00.000000Z",
        service_key=service,
        author_signature=signature,
    )
    receipt = make_receipt(entry, service)
    verify_receipt(receipt, statement, signature, service.public_key())

    other = make_statement(run_id="r", kind="privacy_spent", payload={"eps": 5.0}, author="silo:a")
    with pytest.raises(LineageSignatureError, match="acknowledged different content"):
        verify_receipt(receipt, other, signature, service.public_key())
    with pytest.raises(LineageSignatureError, match="service signature invalid"):
        verify_receipt(receipt, statement, signature, Ed25519PrivateKey.generate().public_key())
    moved = receipt.model_copy(update={"seq": 4})
    with pytest.raises(LineageSignatureError):
        verify_receipt(moved, statement, signature, service.public_key())


@pytest.mark.parametrize("backend", ["_verify_openssl", "_verify_sodium"])
def test_both_ed25519_backends_agree(backend: str, monkeypatch: pytest.MonkeyPatch) -> None:
    if backend == "_verify_sodium":
        pytest.importorskip("nacl")
    monkeypatch.setattr(lineage_crypto, "_verify", getattr(lineage_crypto, backend))
    key = Ed25519PrivateKey.generate()
    msg = b"fedsilo"
    good = key.sign(msg).hex()
    assert verify_signature(key.public_key(), good, msg)
    assert not verify_signature(key.public_key(), good, msg + b"!")
    assert not verify_signature(Ed25519PrivateKey.generate().public_key(), good, msg)
    flipped = good[:10] + ("0" if good[10] != "0" else "1") + good[11:]
    assert not verify_signature(key.public_key(), flipped, msg)
    assert not verify_signature(key.public_key(), good.upper(), msg)
    assert not verify_signature(key.public_key(), None, msg)
