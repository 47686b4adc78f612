"""The lineage ledger's bytes: field encoding, entry hashes, signed messages, Ed25519 checks.

The rules (domains, the ``F`` field encoding, what each signature covers) are written down in
`schemas.lineage`'s docstring; this module is their one implementation, shared by the service,
the silos and every verifier. `schemas.lineage` re-exports its public names.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from typing import Protocol

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

__all__ = [
    "ED25519_BACKEND",
    "compute_entry_hash",
    "EntrySigner",
    "encode_fields",
    "entry_signing_message",
    "receipt_message",
    "statement_message",
    "verify_signature",
]


class EntrySigner(Protocol):
    """What signs for the service: an ``Ed25519PrivateKey``, or a hook to a PKCS#11 token or KMS
    that returns raw 64-byte Ed25519 signatures."""

    def sign(self, data: bytes) -> bytes: ...


_ENTRY_DOMAIN = b"fedsilo/ledger/entry/v1\x00"
_ENTRY_SIG_DOMAIN = b"fedsilo/ledger/entry-sig/v1\x00"
_STATEMENT_DOMAIN = b"fedsilo/ledger/statement/v1\x00"
_RECEIPT_DOMAIN = b"fedsilo/ledger/receipt/v1\x00"
_SIG_HEX_RE = re.compile(r"^[0-9a-f]{128}$")


def encode_fields(domain: bytes, fields: Sequence[str | int | None]) -> bytes:
    """``domain`` followed by each field ``F``-encoded (rules in `schemas.lineage`)."""
    parts = [domain]
    for field in fields:
        if field is None:
            parts.append(b"\x00")
        else:
            raw = str(field).encode("utf-8", "surrogatepass")
            parts.append(b"\x01" + len(raw).to_bytes(8, "big") + raw)
    return b"".join(parts)


def compute_entry_hash(
    *,
    seq: int,
    run_id: str | None,
    kind: str,
    payload: str,
    prev_hash: str,
    author: str,
    created_at: str,
    author_signature: str | None,
) -> str:
    """The sha256 hex digest that identifies an entry (encoding in the module docstring)."""
    fields = (seq, run_id, kind, payload, prev_hash, author, created_at, author_signature)
    return hashlib.sha256(encode_fields(_ENTRY_DOMAIN, fields)).hexdigest()


def entry_signing_message(entry_hash: str) -> bytes:
    """Bytes the service signs for an entry: domain || raw entry hash."""
    return _ENTRY_SIG_DOMAIN + _hex_bytes(entry_hash)


def statement_message(*, run_id: str | None, kind: str, payload: str, author: str) -> bytes:
    """Bytes a silo signs for the entry content it submits (before seq/prev_hash exist)."""
    return encode_fields(_STATEMENT_DOMAIN, (run_id, kind, payload, author))


def receipt_message(seq: int, entry_hash: str) -> bytes:
    """Bytes the service signs in a receipt: domain || F(seq) || raw entry hash."""
    return encode_fields(_RECEIPT_DOMAIN, (seq,)) + _hex_bytes(entry_hash)


def _hex_bytes(text: str) -> bytes:
    # A tampered hash may hold non-hex characters; encode them so the signature simply fails.
    try:
        return bytes.fromhex(text)
    except ValueError:
        return text.encode("utf-8", "surrogatepass")


def _verify_openssl(public_key: Ed25519PublicKey, signature: bytes, msg: bytes) -> bool:
    try:
        public_key.verify(signature, msg)
    except InvalidSignature:
        return False
    return True


def _verify_sodium(public_key: Ed25519PublicKey, signature: bytes, msg: bytes) -> bool:
    try:
        _sodium_open(signature + msg, public_key.public_bytes_raw())
    except _SodiumBadSignature:
        return False
    return True


# libsodium (PyNaCl, optional) verifies Ed25519 about twice as fast as OpenSSL (~63 vs ~120 us
# here), which is what keeps re-checking a 100k-entry ledger within seconds; verify_chain
# spreads the work over forked processes (or threads: both release the GIL). The two agree on
# every signature an honest key produces.
try:
    from nacl.bindings import crypto_sign_open as _sodium_open
    from nacl.exceptions import BadSignatureError as _SodiumBadSignature

    ED25519_BACKEND = "libsodium"
    _verify = _verify_sodium
except ImportError:  # pragma: no cover - depends on the installation
    ED25519_BACKEND = "openssl"
    _verify = _verify_openssl


def verify_signature(public_key: Ed25519PublicKey, signature_hex: str | None, msg: bytes) -> bool:
    """True when `signature_hex` is a valid Ed25519 signature of `msg` by `public_key`.

    Only the canonical spelling (128 lowercase hex digits) counts: ``bytes.fromhex`` would also
    accept upper case and spaces, letting a stored signature change unnoticed.
    """
    if signature_hex is None or not _SIG_HEX_RE.match(signature_hex):
        return False
    return _verify(public_key, bytes.fromhex(signature_hex), msg)
