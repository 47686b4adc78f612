"""Sealed payloads: signed by the silo, encrypted to the service, bound to run/round/silo.

Tree updates are not additive, so secure aggregation cannot hide them; a silo seals them
instead, on top of TLS, so that only the service's private key opens them (not a TLS-
terminating proxy, not a log of request bodies) and only the silo's identity key made them.

Version 2 (written by `seal`): RFC 9180 HPKE from `cryptography` (base mode,
DHKEM(X25519, HKDF-SHA256), HKDF-SHA256, ChaCha20-Poly1305), no home-made construction:

1. hpke = HPKE.Seal(service_public, info = LABEL_V2 + transcript(run, round, silo, purpose,
   service_public), payload), i.e. the encapsulated key followed by the ciphertext;
2. signature = Ed25519(silo identity key, transcript("seal-sig-v2", header, hpke)), where the
   header names run, round, silo, purpose, the suite and the service key's sha256.

Wire layout: ``b"FSS2" | u32 header length | header JSON | hpke | signature``.

Version 1 (``b"FSSL"``, an HPKE-like construction of X25519 + HKDF + AES-256-GCM made before
`cryptography` shipped HPKE) is still opened, so payloads sealed by agents of the previous
release stay readable during an upgrade; nothing writes it any more.

`open_sealed` checks, in order: the layout; the header's binding against what the service
expects (`SealBindingError` names the field); the signature under the silo's registered key
(`SealSignatureError`); then decrypts (`SealDecryptError`: tampered, or sealed to another
service key). The silo half (`seal`) imports nothing from the service.
"""

from __future__ import annotations

import hashlib
import json

from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes, hpke
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from schemas.secagg.crypto import transcript

MAGIC = b"FSS2"
MAGIC_V1 = b"FSSL"
LABEL = b"fedsilo-sealed/v1"
LABEL_V2 = b"fedsilo-sealed/v2"
SUITE_NAME = "DHKEM(X25519,HKDF-SHA256)/HKDF-SHA256/ChaCha20Poly1305"
_SUITE = hpke.Suite(hpke.KEM.X25519, hpke.KDF.HKDF_SHA256, hpke.AEAD.CHACHA20_POLY1305)
_HPKE_MIN = 32 + 16  # encapsulated X25519 key + Poly1305 tag
NONCE_BYTES = 12
SIGNATURE_BYTES = 64
_LEN_BYTES = 4
MAX_HEADER_BYTES = 4096


class SealError(Exception):
    """Base class: a sealed payload cannot be opened. The message says who and why."""


class SealFormatError(SealError):
    """The bytes are not a sealed payload (wrong magic, truncated, header not JSON)."""


class SealBindingError(SealError):
    """The payload is sealed for another run, round, silo, purpose or service key."""


class SealSignatureError(SealError):
    """The signature does not verify under the silo's registered identity key."""


class SealDecryptError(SealError):
    """AES-GCM authentication failed: altered ciphertext, or sealed to another key."""


def generate_service_key() -> X25519PrivateKey:
    """A new X25519 key pair for the service; publish `service_public_bytes(key)` to silos."""
    return X25519PrivateKey.generate()


def service_public_bytes(key: X25519PrivateKey) -> bytes:
    """The raw 32-byte public key silos seal to."""
    return _raw_public(key.public_key())


def _raw_public(key: X25519PublicKey | Ed25519PublicKey) -> bytes:
    return key.public_bytes(Encoding.Raw, PublicFormat.Raw)


def _key(
    shared: bytes, run_id: str, round_num: int, purpose: str, silo: str, eph: bytes, svc: bytes
) -> bytes:
    salt = hashlib.sha256(transcript("seal-salt", run_id, round_num)).digest()
    info = LABEL + transcript(purpose, silo, eph, svc)
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=salt, info=info).derive(shared)


def _associated(run_id: str, round_num: int, silo: str, purpose: str, eph: bytes, svc: bytes):
    return transcript("seal-ad", run_id, round_num, silo, purpose, eph, svc)


def seal(
    payload: bytes,
    *,
    service_public: bytes,
    silo_key: Ed25519PrivateKey,
    run_id: str,
    round_num: int,
    silo: str,
    purpose: str = "tree-update",
) -> bytes:
    """Encrypt `payload` to the service's X25519 key and sign it with the silo's key.

    Parameters
    ----------
    payload
        The bytes to protect (e.g. a tree-update envelope).
    service_public
        The service's raw 32-byte X25519 public key, as published for the federation.
    silo_key
        The silo's Ed25519 identity key (the one registered at enrolment).
    run_id, round_num, silo, purpose
        The context the payload is bound to; opening it under any other context fails.
    """
    info = _info_v2(run_id, round_num, silo, purpose, service_public)
    sealed = _SUITE.encrypt(payload, X25519PublicKey.from_public_bytes(service_public), info=info)
    header = json.dumps(
        {
            "run_id": run_id,
            "round": round_num,
            "silo": silo,
            "purpose": purpose,
            "suite": SUITE_NAME,
            "service_key_sha256": hashlib.sha256(service_public).hexdigest(),
        },
        sort_keys=True,
    ).encode()
    signature = silo_key.sign(transcript("seal-sig-v2", header, sealed))
    return MAGIC + len(header).to_bytes(_LEN_BYTES, "big") + header + sealed + signature


def _info_v2(run_id: str, round_num: int, silo: str, purpose: str, svc: bytes) -> bytes:
    return LABEL_V2 + transcript(run_id, round_num, silo, purpose, svc)


def open_sealed(
    sealed: bytes,
    *,
    service_key: X25519PrivateKey,
    silo_public: bytes,
    run_id: str,
    round_num: int,
    silo: str,
    purpose: str = "tree-update",
) -> bytes:
    """Verify and decrypt a payload sealed by `seal`; returns the plaintext.

    Parameters
    ----------
    sealed
        The bytes the silo submitted.
    service_key
        The service's X25519 private key.
    silo_public
        The raw 32-byte Ed25519 identity key registered for `silo`.
    run_id, round_num, silo, purpose
        The context the service expects this payload for.

    Raises
    ------
    SealFormatError, SealBindingError, SealSignatureError, SealDecryptError
        See the module docstring; each names the silo and round.
    """
    where = f"silo {silo}, round {round_num}"
    version, header_bytes, header, rest = _split(sealed, where)
    service_public = _raw_public(service_key.public_key())
    expected = {
        "run_id": run_id,
        "round": round_num,
        "silo": silo,
        "purpose": purpose,
        "service_key_sha256": hashlib.sha256(service_public).hexdigest(),
    }
    if version == 2:
        expected["suite"] = SUITE_NAME
    for field, value in expected.items():
        if header.get(field) != value:
            raise SealBindingError(
                f"[{where}] sealed payload has {field}={header.get(field)!r}, expected "
                f"{value!r}: it belongs to another context (replay or misroute); discard it"
            )
    body, signature = rest[:-SIGNATURE_BYTES], rest[-SIGNATURE_BYTES:]
    signed = (
        transcript("seal-sig-v2", header_bytes, body)
        if version == 2
        else transcript("seal-sig", header_bytes, body[:NONCE_BYTES], body[NONCE_BYTES:])
    )
    try:
        Ed25519PublicKey.from_public_bytes(silo_public).verify(signature, signed)
    except (InvalidSignature, ValueError) as exc:
        raise SealSignatureError(
            f"[{where}] signature does not verify under the silo's registered identity key: "
            "the payload was forged or altered in transit; discard it"
        ) from exc
    if version == 2:
        return _decrypt_v2(service_key, body, run_id, round_num, silo, purpose, where)
    nonce, ciphertext = body[:NONCE_BYTES], body[NONCE_BYTES:]
    return _decrypt(service_key, header, nonce, ciphertext, service_public, where)


def _decrypt_v2(
    service_key: X25519PrivateKey,
    body: bytes,
    run_id: str,
    round_num: int,
    silo: str,
    purpose: str,
    where: str,
) -> bytes:
    info = _info_v2(run_id, round_num, silo, purpose, _raw_public(service_key.public_key()))
    try:
        return _SUITE.decrypt(body, service_key, info=info)
    except (InvalidTag, ValueError) as exc:
        raise SealDecryptError(
            f"[{where}] sealed payload fails HPKE (ChaCha20-Poly1305) authentication: it was "
            "altered or sealed to another service key; ask the silo to fetch the federation's "
            "current service key and resubmit"
        ) from exc


def _split(sealed: bytes, where: str) -> tuple[int, bytes, dict, bytes]:
    magic = sealed[:4]
    if magic not in (MAGIC, MAGIC_V1):
        raise SealFormatError(f"[{where}] not a sealed payload (missing FSS2/FSSL magic)")
    version = 2 if magic == MAGIC else 1
    size = int.from_bytes(sealed[4 : 4 + _LEN_BYTES], "big")
    start = 4 + _LEN_BYTES
    rest = sealed[start + size :]
    least = (_HPKE_MIN if version == 2 else NONCE_BYTES + 16) + SIGNATURE_BYTES
    if not 0 < size <= MAX_HEADER_BYTES or len(rest) < least:
        raise SealFormatError(f"[{where}] sealed payload is truncated or its header too long")
    header_bytes = sealed[start : start + size]
    try:
        header = json.loads(header_bytes)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise SealFormatError(f"[{where}] sealed payload header is not JSON: {exc}") from exc
    if not isinstance(header, dict):
        raise SealFormatError(f"[{where}] sealed payload header is not a JSON object")
    return version, header_bytes, header, rest


def _decrypt(
    service_key: X25519PrivateKey,
    header: dict,
    nonce: bytes,
    ciphertext: bytes,
    service_public: bytes,
    where: str,
) -> bytes:
    try:
        eph = bytes.fromhex(str(header.get("ephemeral")))
        shared = service_key.exchange(X25519PublicKey.from_public_bytes(eph))
    except ValueError as exc:
        raise SealFormatError(f"[{where}] sealed payload's ephemeral key is invalid") from exc
    run_id, round_num = header["run_id"], header["round"]
    silo, purpose = header["silo"], header["purpose"]
    key = _key(shared, run_id, round_num, purpose, silo, eph, service_public)
    ad = _associated(run_id, round_num, silo, purpose, eph, service_public)
    try:
        return AESGCM(key).decrypt(nonce, ciphertext, ad)
    except InvalidTag as exc:
        raise SealDecryptError(
            f"[{where}] sealed payload fails AES-GCM authentication: it was altered or "
            "sealed to another service key; ask the silo to fetch the federation's current "
            "service key and resubmit"
        ) from exc
