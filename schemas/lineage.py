"""The lineage ledger's shared contract: canonical JSON, entry hashing, signatures, receipts.

The service appends entries, silos keep their own copy, the CLI verifies exports: all three
hash and sign with the functions here, so none needs the service's internals.

Canonical JSON: see `schemas.canonical` (payloads are canonical JSON objects).

Entry hash
    ``entry_hash = sha256(b"fedsilo/ledger/entry/v1\\0" || F(seq) || F(run_id) || F(kind) ||
    F(payload) || F(prev_hash) || F(author) || F(created_at) || F(author_signature))`` where
    ``F(None) = 0x00`` and ``F(x) = 0x01 || len(utf8(str(x))) as 8 bytes big-endian ||
    utf8(str(x))``. The length prefix makes the encoding injective (no field can bleed into the
    next) and the domain string keeps a ledger hash from ever equalling any other fedsilo hash.
    The silo's signature is inside the hash so the chain also commits to who vouched for it.

Signatures (Ed25519)
    * ``service_signature``: the service signs ``b"fedsilo/ledger/entry-sig/v1\\0" ||
      entry_hash (32 raw bytes)`` for every entry, including the ones a silo wrote.
    * ``author_signature`` (silo-authored entries only; ``None`` when the author is the
      service): the silo signs its *statement* before the service has placed it, i.e. before
      seq, prev_hash and created_at exist: ``F``-encoded (run_id, kind, payload, author) under
      the domain ``b"fedsilo/ledger/statement/v1\\0"``. A silo that wants its statement bound
      to one round puts the round (or a nonce) in the payload.
    * Receipts: the service signs ``b"fedsilo/ledger/receipt/v1\\0" || F(seq) ||
      entry_hash`` and hands the silo seq, prev_hash, created_at and entry_hash with it, so the
      silo can recompute the entry hash from its own statement and prove later what the
      service acknowledged.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any, Protocol

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from pydantic import BaseModel, ConfigDict

from schemas.canonical import CanonicalJsonError, canonical_json, is_canonical, parse_json
from schemas.exceptions import SchemaError
from schemas.lineage_crypto import (
    ED25519_BACKEND,
    EntrySigner,
    compute_entry_hash,
    entry_signing_message,
    receipt_message,
    statement_message,
    verify_signature,
)

__all__ = [
    "ED25519_BACKEND",
    "GENESIS_HASH",
    "EntrySigner",
    "KINDS",
    "SERVICE_AUTHOR",
    "CanonicalJsonError",
    "LineageEntry",
    "LineageError",
    "LineageSignatureError",
    "Receipt",
    "Statement",
    "canonical_json",
    "check_author",
    "compute_entry_hash",
    "entry_signing_message",
    "is_canonical",
    "make_receipt",
    "make_statement",
    "parse_json",
    "receipt_message",
    "seal_entry",
    "sign_statement",
    "statement_message",
    "utc_now_iso",
    "verify_receipt",
    "verify_signature",
]

GENESIS_HASH = "0" * 64
SERVICE_AUTHOR = "service"

# Known kinds; extend this set when a new kind of event is recorded. Verification accepts any
# kind (an old verifier must still check a newer ledger), only appending is strict.
KINDS = frozenset(
    {
        "run_started",
        "silo_joined",
        "silo_revoked",
        "silo_refused",
        "validation_result",
        "update_accepted",
        "update_rejected",
        "rejections",
        "dropout",
        "recovery",
        "round_failed",
        "aggregate",
        "model_saved",
        "metrics",
        "privacy_spent",
        "personalized",
        "distilled",
        "ensembled",
        "run_finished",
        "run_failed",
        "decline",
        "run_cancelled",
        "contract_published",
        "vertical_started",
        "vertical_psi",
        "vertical_tree",
        "vertical_epoch",
        "vertical_finished",
        "vertical_failed",
    }
)

_AUTHOR_RE = re.compile(r"^(service|silo:[A-Za-z0-9][A-Za-z0-9_.-]{0,63})$")


class LineageError(SchemaError):
    """Base class for lineage ledger errors raised by the shared contract."""


class LineageSignatureError(LineageError):
    """A statement, entry or receipt signature does not verify."""


def utc_now_iso() -> str:
    """The current UTC time as ``YYYY-MM-DDTHH:MM:SS.ffffffZ`` (the ledger's created_at)."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def check_author(author: str) -> None:
    """Raise LineageError unless `author` is ``service`` or ``silo:<name>``."""
    if not _AUTHOR_RE.match(author):
        raise LineageError(
            f"author {author!r} is not 'service' or 'silo:<name>' (name: letters, digits, "
            "'_', '.', '-', at most 64 characters)"
        )


# ----------------------------------------------------------------------------- models


class _Content(Protocol):
    """What an author states: the part of an entry that exists before the service places it."""

    @property
    def run_id(self) -> str | None: ...
    @property
    def kind(self) -> str: ...
    @property
    def payload(self) -> str: ...
    @property
    def author(self) -> str: ...


def _placed_hash(
    content: _Content, *, seq: int, prev_hash: str, created_at: str, author_signature: str | None
) -> str:
    return compute_entry_hash(
        seq=seq,
        run_id=content.run_id,
        kind=content.kind,
        payload=content.payload,
        prev_hash=prev_hash,
        author=content.author,
        created_at=created_at,
        author_signature=author_signature,
    )


class Statement(BaseModel):
    """What a silo asserts and signs: the entry content it submits to the service."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    run_id: str | None
    kind: str
    payload: str
    author: str

    def message(self) -> bytes:
        """The bytes the author signs (see `statement_message`)."""
        return statement_message(
            run_id=self.run_id, kind=self.kind, payload=self.payload, author=self.author
        )

    def placed_hash(
        self, *, seq: int, prev_hash: str, created_at: str, author_signature: str | None
    ) -> str:
        """The entry hash this statement gets when placed at `seq` after `prev_hash`."""
        return _placed_hash(
            self,
            seq=seq,
            prev_hash=prev_hash,
            created_at=created_at,
            author_signature=author_signature,
        )


def make_statement(
    *, run_id: str | None, kind: str, payload: dict[str, Any] | str, author: str
) -> Statement:
    """Build a statement, canonicalising a dict payload (a str payload must be canonical)."""
    check_author(author)
    if isinstance(payload, dict):
        text = canonical_json(payload)
    elif isinstance(payload, str) and is_canonical(payload):
        text = payload
    else:
        text = ""
    if not text.startswith("{"):
        raise CanonicalJsonError(
            f"{kind} payload must be a canonical JSON object; pass a dict or canonical_json(...)"
        )
    return Statement(run_id=run_id, kind=kind, payload=text, author=author)


def sign_statement(key: Ed25519PrivateKey, statement: Statement) -> str:
    """The author's signature (hex) over a statement."""
    return key.sign(statement.message()).hex()


class LineageEntry(BaseModel):
    """One ledger entry as exported, verified and kept by silos.

    Fields are loosely typed on purpose: a verifier must be able to load a tampered entry and
    say what is wrong with it rather than fail to parse it.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    seq: int
    run_id: str | None
    kind: str
    payload: str
    prev_hash: str
    entry_hash: str
    author: str
    author_signature: str | None
    service_signature: str
    created_at: str

    def recompute_hash(self, seq: int | None = None) -> str:
        """Hash of this entry's content, optionally as if it had sequence number `seq`."""
        return _placed_hash(
            self,
            seq=self.seq if seq is None else seq,
            prev_hash=self.prev_hash,
            created_at=self.created_at,
            author_signature=self.author_signature,
        )

    def statement(self) -> Statement:
        """The statement the author signed (meaningful for silo-authored entries)."""
        return Statement(
            run_id=self.run_id, kind=self.kind, payload=self.payload, author=self.author
        )


def seal_entry(
    statement: Statement,
    *,
    seq: int,
    prev_hash: str,
    created_at: str,
    service_key: EntrySigner,
    author_signature: str | None = None,
) -> LineageEntry:
    """Place a statement at `seq` after `prev_hash`: compute its hash and sign it as service.

    Parameters
    ----------
    statement
        The content; ``author`` is ``service`` or ``silo:<name>``.
    seq, prev_hash, created_at
        Its position in the chain and its time (UTC, `utc_now_iso` format).
    service_key
        The service's Ed25519 identity key.
    author_signature
        The silo's `sign_statement` signature; required for silo authors, refused for the
        service (whose signature is the service signature).
    """
    if (statement.author == SERVICE_AUTHOR) != (author_signature is None):
        raise LineageError(
            f"entry by {statement.author}: a silo-authored entry needs the silo's "
            "author_signature and a service entry must not carry one"
        )
    entry_hash = statement.placed_hash(
        seq=seq, prev_hash=prev_hash, created_at=created_at, author_signature=author_signature
    )
    return LineageEntry(
        seq=seq,
        run_id=statement.run_id,
        kind=statement.kind,
        payload=statement.payload,
        prev_hash=prev_hash,
        entry_hash=entry_hash,
        author=statement.author,
        author_signature=author_signature,
        service_signature=service_key.sign(entry_signing_message(entry_hash)).hex(),
        created_at=created_at,
    )


class Receipt(BaseModel):
    """The service's acknowledgement of a silo's entry, kept in the silo's workspace."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    seq: int
    entry_hash: str
    prev_hash: str
    created_at: str
    signature: str


def make_receipt(entry: LineageEntry, service_key: EntrySigner) -> Receipt:
    """Sign (seq, entry_hash) for the silo that authored `entry`."""
    return Receipt(
        seq=entry.seq,
        entry_hash=entry.entry_hash,
        prev_hash=entry.prev_hash,
        created_at=entry.created_at,
        signature=service_key.sign(receipt_message(entry.seq, entry.entry_hash)).hex(),
    )


def verify_receipt(
    receipt: Receipt,
    statement: Statement,
    author_signature: str,
    service_public_key: Ed25519PublicKey,
) -> None:
    """Check that `receipt` acknowledges exactly this signed statement.

    Raises
    ------
    LineageSignatureError
        If the receipt's entry hash does not follow from the statement, or its signature is
        not the service's.
    """
    expected = statement.placed_hash(
        seq=receipt.seq,
        prev_hash=receipt.prev_hash,
        created_at=receipt.created_at,
        author_signature=author_signature,
    )
    if expected != receipt.entry_hash:
        raise LineageSignatureError(
            f"receipt for entry {receipt.seq} does not match the {statement.kind} statement "
            f"of {statement.author}: the service acknowledged different content"
        )
    msg = receipt_message(receipt.seq, receipt.entry_hash)
    if not verify_signature(service_public_key, receipt.signature, msg):
        raise LineageSignatureError(
            f"receipt for entry {receipt.seq}: service signature invalid (forged receipt, or "
            "the wrong service public key)"
        )
