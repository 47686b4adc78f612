"""Sealed payloads: round trip, and every way a sealed payload must fail to open."""

from __future__ import annotations

import json

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas.sealed import (
    MAGIC,
    SIGNATURE_BYTES,
    SealBindingError,
    SealDecryptError,
    SealFormatError,
    SealSignatureError,
    generate_service_key,
    open_sealed,
    seal,
    service_public_bytes,
)
from schemas.secagg.crypto import identity_public_bytes, transcript

SERVICE = generate_service_key()
SILO_KEY = Ed25519PrivateKey.generate()
CONTEXT = {"run_id": "run-1", "round_num": 3, "silo": "alpha"}


def _seal(payload: bytes = b"tree update bytes", **over) -> bytes:
    args = {**CONTEXT, **over}
    return seal(payload, service_public=service_public_bytes(SERVICE), silo_key=SILO_KEY, **args)


def _open(sealed: bytes, **over) -> bytes:
    args = {**CONTEXT, **over}
    args.setdefault("service_key", SERVICE)
    args.setdefault("silo_public", identity_public_bytes(SILO_KEY))
    return open_sealed(sealed, **args)


@settings(max_examples=30, deadline=None)
@given(payload=st.binary(max_size=4096))
def test_round_trip_any_payload(payload: bytes) -> None:
    assert _open(_seal(payload)) == payload


def test_ciphertext_hides_the_payload_and_is_fresh_each_time() -> None:
    secret = b"leaf values of silo alpha" * 4
    first, second = _seal(secret), _seal(secret)
    assert secret not in first
    assert first != second  # fresh ephemeral key and nonce per payload


@pytest.mark.parametrize(
    ("field", "value"),
    [("run_id", "run-2"), ("round_num", 4), ("silo", "beta"), ("purpose", "other")],
)
def test_wrong_binding_names_the_field(field: str, value: object) -> None:
    with pytest.raises(SealBindingError, match="expected"):
        _open(_seal(), **{field: value})


def test_sealed_to_another_service_key() -> None:
    other = generate_service_key()
    with pytest.raises(SealBindingError, match="service_key_sha256"):
        _open(_seal(), service_key=other)


def test_bad_signature_other_signer() -> None:
    stranger = Ed25519PrivateKey.generate()
    sealed = seal(b"x", service_public=service_public_bytes(SERVICE), silo_key=stranger, **CONTEXT)
    with pytest.raises(SealSignatureError, match="registered identity key"):
        _open(sealed)


@pytest.mark.parametrize("where", ["ciphertext", "nonce", "signature"])
def test_tampering_is_detected(where: str) -> None:
    sealed = bytearray(_seal(b"a" * 64))
    header_end = 8 + int.from_bytes(sealed[4:8], "big")
    position = {
        "nonce": header_end + 1,
        "ciphertext": header_end + 20,
        "signature": len(sealed) - SIGNATURE_BYTES + 5,
    }[where]
    sealed[position] ^= 0x01
    with pytest.raises(SealSignatureError):
        _open(bytes(sealed))


def test_tampered_header_field_not_checked_by_binding_is_caught_by_signature() -> None:
    sealed = _seal()
    size = int.from_bytes(sealed[4:8], "big")
    header = json.loads(sealed[8 : 8 + size])
    header["ephemeral"] = "00" * 32
    new_header = json.dumps(header, sort_keys=True).encode()
    forged = MAGIC + len(new_header).to_bytes(4, "big") + new_header + sealed[8 + size :]
    with pytest.raises(SealSignatureError):
        _open(forged)


def test_signed_but_undecryptable_payload() -> None:
    """A silo that signs garbage (buggy or malicious) is told apart from a forger."""
    sealed = _seal(b"payload")
    size = int.from_bytes(sealed[4:8], "big")
    header = sealed[8 : 8 + size]
    nonce = sealed[8 + size : 8 + size + 12]
    garbage = b"\x00" * 40
    signature = SILO_KEY.sign(transcript("seal-sig", header, nonce, garbage))
    forged = sealed[: 8 + size] + nonce + garbage + signature
    with pytest.raises(SealDecryptError, match="AES-GCM"):
        _open(forged)


@pytest.mark.parametrize(
    "blob",
    [
        b"",
        b"FSSL",
        b"NOPE" + b"\x00" * 200,
        MAGIC + (10).to_bytes(4, "big") + b"not json!!" + b"\x00" * 100,
    ],
)
def test_malformed_bytes(blob: bytes) -> None:
    with pytest.raises(SealFormatError, match=r"\[silo alpha, round 3\]"):
        _open(blob)
