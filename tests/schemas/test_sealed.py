"""Sealed payloads: round trip, and every way a sealed payload must fail to open."""

from __future__ import annotations

import hashlib
import json
import os

import pytest
from cryptography.hazmat.primitives import hashes, hpke
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas.sealed import (
    LABEL,
    LABEL_V2,
    MAGIC,
    MAGIC_V1,
    SIGNATURE_BYTES,
    SUITE_NAME,
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


@pytest.mark.parametrize("where", ["encapsulated key", "ciphertext", "signature"])
def test_tampering_is_detected(where: str) -> None:
    sealed = bytearray(_seal(b"a" * 64))
    header_end = 8 + int.from_bytes(sealed[4:8], "big")
    position = {
        "encapsulated key": header_end + 1,
        "ciphertext": header_end + 40,
        "signature": len(sealed) - SIGNATURE_BYTES + 5,
    }[where]
    sealed[position] ^= 0x01
    with pytest.raises(SealSignatureError):
        _open(bytes(sealed))


def test_seal_is_rfc9180_hpke_under_the_service_key() -> None:
    """The body is plain HPKE: cryptography's own HPKE opens it with the documented info."""
    sealed = _seal(b"payload")
    size = int.from_bytes(sealed[4:8], "big")
    assert sealed[:4] == MAGIC == b"FSS2"
    assert json.loads(sealed[8 : 8 + size])["suite"] == SUITE_NAME
    body = sealed[8 + size : -SIGNATURE_BYTES]
    suite = hpke.Suite(hpke.KEM.X25519, hpke.KDF.HKDF_SHA256, hpke.AEAD.CHACHA20_POLY1305)
    info = LABEL_V2 + transcript("run-1", 3, "alpha", "tree-update", service_public_bytes(SERVICE))
    assert suite.decrypt(body, SERVICE, info=info) == b"payload"


def test_tampered_header_is_caught_by_signature() -> None:
    sealed = _seal()
    size = int.from_bytes(sealed[4:8], "big")
    header = json.loads(sealed[8 : 8 + size])
    header["note"] = "added in transit"
    new_header = json.dumps(header, sort_keys=True).encode()
    forged = MAGIC + len(new_header).to_bytes(4, "big") + new_header + sealed[8 + size :]
    with pytest.raises(SealSignatureError):
        _open(forged)


def test_signed_but_undecryptable_payload() -> None:
    """A silo that signs garbage (buggy or malicious) is told apart from a forger."""
    sealed = _seal(b"payload")
    size = int.from_bytes(sealed[4:8], "big")
    header = sealed[8 : 8 + size]
    garbage = b"\x00" * 60
    signature = SILO_KEY.sign(transcript("seal-sig-v2", header, garbage))
    forged = sealed[: 8 + size] + garbage + signature
    with pytest.raises(SealDecryptError, match="HPKE"):
        _open(forged)


def _seal_v1(payload: bytes) -> bytes:
    """A payload as the previous release's agents sealed it (X25519 + HKDF + AES-256-GCM)."""
    svc = service_public_bytes(SERVICE)
    ephemeral = X25519PrivateKey.generate()
    eph = ephemeral.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    shared = ephemeral.exchange(X25519PublicKey.from_public_bytes(svc))
    salt = hashlib.sha256(transcript("seal-salt", "run-1", 3)).digest()
    info = LABEL + transcript("tree-update", "alpha", eph, svc)
    key = HKDF(algorithm=hashes.SHA256(), length=32, salt=salt, info=info).derive(shared)
    nonce = os.urandom(12)
    ad = transcript("seal-ad", "run-1", 3, "alpha", "tree-update", eph, svc)
    ciphertext = AESGCM(key).encrypt(nonce, payload, ad)
    header = json.dumps(
        {
            "run_id": "run-1",
            "round": 3,
            "silo": "alpha",
            "purpose": "tree-update",
            "ephemeral": eph.hex(),
            "service_key_sha256": hashlib.sha256(svc).hexdigest(),
        },
        sort_keys=True,
    ).encode()
    signature = SILO_KEY.sign(transcript("seal-sig", header, nonce, ciphertext))
    return MAGIC_V1 + len(header).to_bytes(4, "big") + header + nonce + ciphertext + signature


def test_previous_release_payloads_still_open() -> None:
    assert _open(_seal_v1(b"old agent's trees")) == b"old agent's trees"
    tampered = bytearray(_seal_v1(b"old agent's trees"))
    tampered[-70] ^= 0x01
    with pytest.raises(SealSignatureError):
        _open(bytes(tampered))


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
