"""Cryptographic primitives of the protocol, all from the `cryptography` package.

- X25519 key agreement; HKDF-SHA256 turns a shared secret into either a pairwise mask seed or
  an AES-256-GCM key for relayed shares. The two uses have distinct HKDF ``info`` labels, and
  the salt binds both to (run, round), so a key from one round is useless in another.
- AES-256-GCM with associated data (run, round, stage, sender, recipient): the relaying
  service cannot redirect a share to another silo or replay it into another round.
- Ed25519 signatures over a length-prefixed transcript that starts with (run, round, stage,
  silo): a signed message cannot be replayed at another stage, round or run.
"""

from __future__ import annotations

import hashlib
import os
from typing import Unpack

from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
)

from schemas.secagg.exceptions import (
    DecryptionError,
    MessageFormatError,
    SignatureError,
    Where,
)

PROTOCOL_LABEL = b"fedsilo-secagg/v1"
MASK_SEED_INFO = PROTOCOL_LABEL + b"/mask-seed"
SHARE_KEY_INFO = PROTOCOL_LABEL + b"/share-enc"
NONCE_BYTES = 12
KEY_BYTES = 32


def transcript(*parts: bytes | str | int) -> bytes:
    """Encode parts unambiguously (type tag + 8-byte length prefix) for signing and hashing.

    Parameters
    ----------
    *parts
        Byte strings, text (UTF-8) or non-negative integers.

    Returns
    -------
    bytes
        Concatenation where no two different part lists give the same bytes.
    """
    out = bytearray(PROTOCOL_LABEL)
    for part in parts:
        if isinstance(part, int):
            raw, tag = part.to_bytes(8, "big"), b"i"
        elif isinstance(part, str):
            raw, tag = part.encode("utf-8"), b"s"
        else:
            raw, tag = bytes(part), b"b"
        out += tag + len(raw).to_bytes(8, "big") + raw
    return bytes(out)


def generate_x25519() -> X25519PrivateKey:
    """Return a fresh X25519 private key (one per use per round: never reuse across rounds)."""
    return X25519PrivateKey.generate()


def x25519_public_bytes(key: X25519PrivateKey) -> bytes:
    """Return the 32-byte raw public key of ``key``."""
    return key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


def x25519_private_bytes(key: X25519PrivateKey) -> bytes:
    """Return the 32-byte raw private key (what is Shamir-shared for dropout recovery)."""
    return key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())


def x25519_private_from_bytes(raw: bytes) -> X25519PrivateKey:
    """Load a 32-byte raw X25519 private key."""
    return X25519PrivateKey.from_private_bytes(raw)


def agree(private: X25519PrivateKey, peer_public: bytes) -> bytes:
    """X25519 shared secret between ``private`` and the 32-byte ``peer_public``.

    Raises
    ------
    MessageFormatError
        If the peer key is malformed or of low order (the shared secret would be all zeros).
    """
    try:
        return private.exchange(X25519PublicKey.from_public_bytes(peer_public))
    except ValueError as exc:
        raise MessageFormatError(
            f"peer X25519 public key is invalid ({exc}); the peer must advertise a fresh key"
        ) from exc


def check_public(raw: bytes, name: str, **where: Unpack[Where]) -> None:
    """Refuse `raw` unless it is a 32-byte X25519 public key that agrees to a non-zero secret
    (a test exchange with a throwaway key): a bad key caught on arrival cannot break the
    unmasking of a round, which only then agrees with it.

    Raises
    ------
    MessageFormatError
        If the key is malformed or of low order.
    """
    try:
        generate_x25519().exchange(X25519PublicKey.from_public_bytes(raw))
    except ValueError as exc:
        raise MessageFormatError(
            f"{name} is not a valid X25519 public key ({exc}); advertise a fresh key", **where
        ) from exc


def _hkdf(shared: bytes, info: bytes, run_id: str, round_num: int, a: str, b: str) -> bytes:
    lo, hi = sorted((a, b))
    salt = hashlib.sha256(transcript("salt", run_id, round_num)).digest()
    kdf = HKDF(
        algorithm=hashes.SHA256(), length=KEY_BYTES, salt=salt, info=info + transcript(lo, hi)
    )
    return kdf.derive(shared)


def derive_mask_seed(shared: bytes, *, run_id: str, round_num: int, a: str, b: str) -> bytes:
    """Pairwise mask seed s_ab (symmetric in a, b) from the s-keys' shared secret."""
    return _hkdf(shared, MASK_SEED_INFO, run_id, round_num, a, b)


def derive_share_key(shared: bytes, *, run_id: str, round_num: int, a: str, b: str) -> bytes:
    """AES-256-GCM key for shares between a and b from the c-keys' shared secret."""
    return _hkdf(shared, SHARE_KEY_INFO, run_id, round_num, a, b)


def share_associated_data(
    run_id: str, round_num: int, stage: str, sender: str, recipient: str
) -> bytes:
    """Associated data that binds an encrypted share to its context and direction."""
    return transcript("share-ad", run_id, round_num, stage, sender, recipient)


def encrypt(key: bytes, plaintext: bytes, associated_data: bytes) -> bytes:
    """AES-256-GCM encrypt; returns nonce (12 random bytes) followed by ciphertext and tag."""
    nonce = os.urandom(NONCE_BYTES)
    return nonce + AESGCM(key).encrypt(nonce, plaintext, associated_data)


def decrypt(key: bytes, blob: bytes, associated_data: bytes) -> bytes:
    """AES-256-GCM decrypt ``nonce || ciphertext``.

    Raises
    ------
    DecryptionError
        If authentication fails: wrong key, altered bytes, or wrong associated data.
    """
    if len(blob) < NONCE_BYTES + 16:
        raise DecryptionError(f"ciphertext of {len(blob)} bytes is too short to be AES-GCM")
    try:
        return AESGCM(key).decrypt(blob[:NONCE_BYTES], blob[NONCE_BYTES:], associated_data)
    except InvalidTag as exc:
        raise DecryptionError(
            "encrypted share failed authentication: it was altered, misrouted by the relay, "
            "or encrypted for another round"
        ) from exc


def generate_identity() -> Ed25519PrivateKey:
    """Return a new long-term Ed25519 identity key for a silo."""
    return Ed25519PrivateKey.generate()


def identity_public_bytes(key: Ed25519PrivateKey) -> bytes:
    """Return the 32-byte raw Ed25519 public key that the federation registers for a silo."""
    return key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


def signing_bytes(run_id: str, round_num: int, stage: str, silo: str, body: bytes) -> bytes:
    """The exact bytes that a protocol message's signature covers."""
    return transcript("sig", run_id, round_num, stage, silo, body)


def sign(
    key: Ed25519PrivateKey, *, run_id: str, round_num: int, stage: str, silo: str, body: bytes
) -> bytes:
    """Sign ``body`` bound to (run, round, stage, silo); returns a 64-byte signature."""
    return key.sign(signing_bytes(run_id, round_num, stage, silo, body))


def verify(
    public: bytes,
    signature: bytes,
    *,
    run_id: str,
    round_num: int,
    stage: str,
    silo: str,
    body: bytes,
) -> None:
    """Verify a signature made by :func:`sign`.

    Raises
    ------
    SignatureError
        If the signature does not verify under ``public`` for this exact context.
    """
    where: Where = {"run_id": run_id, "round_num": round_num, "stage": stage, "silo": silo}
    try:
        Ed25519PublicKey.from_public_bytes(public).verify(
            signature, signing_bytes(run_id, round_num, stage, silo, body)
        )
    except InvalidSignature as exc:
        raise SignatureError(
            "signature does not verify under the silo's registered identity key: the message "
            "was forged, altered, or signed for another run/round/stage; discard it",
            **where,
        ) from exc
    except ValueError as exc:
        raise SignatureError(f"malformed identity key or signature ({exc})", **where) from exc
