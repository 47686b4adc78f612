"""Ledger checkpoints: the service's signed statement of the ledger's height and head, and the
silos' countersignatures that turn it into an anchor the service cannot rewrite.

Why: the hash chain and the service signature stop nobody who holds the service key, and a
silo's receipts cover only the entries that silo wrote. At every round close, failed round and
run end the service publishes a checkpoint; each participating silo checks the service
signature, countersigns it with its own Ed25519 key and keeps both in its workspace. Deleting
or rewriting any entry at or before a countersigned height (service-only entries included)
then contradicts a signature the attacker cannot make.

Messages (``F`` is the field encoding of `schemas.lineage`)::

    body          = F(height) || F(head_hash) || F(run_id) || F(round) || F(event) || F(created_at)
    service signs   b"fedsilo/ledger/checkpoint/v1\\0" || body
    silo signs      b"fedsilo/ledger/checkpoint-countersign/v1\\0" || F("silo:<name>") || body
                    || F(service_signature)

The countersignature covers the service signature, so a silo vouches for exactly the checkpoint
it verified.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Literal, Protocol

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from pydantic import BaseModel, ConfigDict, Field

from schemas.lineage import LineageError, LineageSignatureError, utc_now_iso
from schemas.lineage_crypto import encode_fields, verify_signature
from schemas.wire import INT32_MAX

__all__ = [
    "CHECKPOINT_EVENTS",
    "COUNTERSIGNED_PARAM",
    "MAX_COUNTERSIGNED_PER_POLL",
    "AnchoredCheckpoint",
    "Checkpoint",
    "CheckpointList",
    "CheckpointSigner",
    "CountersignIn",
    "Countersignature",
    "checkpoint_message",
    "countersign",
    "countersign_message",
    "encode_countersigned",
    "make_checkpoint",
    "merge_checkpoints",
    "parse_countersigned",
    "valid_countersigners",
    "verify_checkpoint",
]

CheckpointEvent = Literal[
    "round_closed", "round_failed", "run_finished", "run_failed", "run_cancelled"
]
CHECKPOINT_EVENTS: tuple[str, ...] = (
    "round_closed",
    "round_failed",
    "run_finished",
    "run_failed",
    "run_cancelled",
)
_CHECKPOINT_DOMAIN = b"fedsilo/ledger/checkpoint/v1\x00"
_COUNTERSIGN_DOMAIN = b"fedsilo/ledger/checkpoint-countersign/v1\x00"
_SILO_PREFIX = "silo:"


class CheckpointSigner(Protocol):
    """Anything that signs with the service's Ed25519 key (a key object, or a KMS/HSM hook)."""

    def sign(self, data: bytes) -> bytes: ...


class Checkpoint(BaseModel):
    """The service's signed statement: the ledger ended at `height` with `head_hash`."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    height: int
    head_hash: str
    run_id: str | None
    round: int | None
    event: str
    created_at: str
    service_signature: str

    def body(self) -> list[str | int | None]:
        return [self.height, self.head_hash, self.run_id, self.round, self.event, self.created_at]

    def describe(self) -> str:
        """``checkpoint of round 3 of run R (round_closed)``, for messages."""
        run = f"run {self.run_id}" if self.run_id else "the federation"
        where = f"round {self.round} of {run}" if self.round is not None else f"the end of {run}"
        return f"checkpoint of {where} ({self.event})"


class Countersignature(BaseModel):
    """One silo's Ed25519 signature over a checkpoint (`countersign_message`)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    silo: str
    signature: str


class AnchoredCheckpoint(BaseModel):
    """A checkpoint with the countersignatures gathered for it (silo copy, export)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    checkpoint: Checkpoint
    countersignatures: tuple[Countersignature, ...] = ()


def checkpoint_message(
    *,
    height: int,
    head_hash: str,
    run_id: str | None,
    round: int | None,
    event: str,
    created_at: str,
) -> bytes:
    """Bytes the service signs for a checkpoint (module docstring)."""
    return encode_fields(_CHECKPOINT_DOMAIN, (height, head_hash, run_id, round, event, created_at))


def countersign_message(checkpoint: Checkpoint, silo: str) -> bytes:
    """Bytes a silo (``silo:<name>``) signs to countersign `checkpoint`."""
    fields = [silo, *checkpoint.body(), checkpoint.service_signature]
    return encode_fields(_COUNTERSIGN_DOMAIN, fields)


def make_checkpoint(
    signer: CheckpointSigner,
    *,
    height: int,
    head_hash: str,
    run_id: str | None,
    round: int | None,
    event: str,
    created_at: str | None = None,
) -> Checkpoint:
    """The service's signed checkpoint of the ledger at `height` (its last entry's seq)."""
    if event not in CHECKPOINT_EVENTS:
        raise LineageError(f"checkpoint event {event!r} is not one of {CHECKPOINT_EVENTS}")
    when = created_at or utc_now_iso()
    msg = checkpoint_message(
        height=height, head_hash=head_hash, run_id=run_id, round=round, event=event, created_at=when
    )
    return Checkpoint(
        height=height,
        head_hash=head_hash,
        run_id=run_id,
        round=round,
        event=event,
        created_at=when,
        service_signature=signer.sign(msg).hex(),
    )


def verify_checkpoint(checkpoint: Checkpoint, service_public_key: Ed25519PublicKey) -> None:
    """Raise LineageSignatureError unless the service signature on `checkpoint` verifies."""
    msg = checkpoint_message(
        height=checkpoint.height,
        head_hash=checkpoint.head_hash,
        run_id=checkpoint.run_id,
        round=checkpoint.round,
        event=checkpoint.event,
        created_at=checkpoint.created_at,
    )
    if not verify_signature(service_public_key, checkpoint.service_signature, msg):
        raise LineageSignatureError(
            f"{checkpoint.describe()} at height {checkpoint.height}: service signature invalid "
            "(forged checkpoint, or not the service key this silo pinned)"
        )


def countersign(checkpoint: Checkpoint, silo: str, key: CheckpointSigner) -> Countersignature:
    """The silo's countersignature (``silo`` is ``silo:<name>``)."""
    return Countersignature(
        silo=silo, signature=key.sign(countersign_message(checkpoint, silo)).hex()
    )


def valid_countersigners(
    anchored: AnchoredCheckpoint, keys: dict[str, Ed25519PublicKey]
) -> tuple[list[str], list[str]]:
    """(silos whose countersignature verifies with `keys`, countersigners whose does not).

    Only a ``silo:<name>`` countersignature counts: `keys` also holds the service's key, and
    a "countersignature" the service makes itself proves nothing the service could not forge.
    """
    good: list[str] = []
    bad: list[str] = []
    for cs in anchored.countersignatures:
        key = keys.get(cs.silo) if cs.silo.startswith(_SILO_PREFIX) else None
        msg = countersign_message(anchored.checkpoint, cs.silo)
        (good if key is not None and verify_signature(key, cs.signature, msg) else bad).append(
            cs.silo
        )
    return sorted(set(good)), sorted(set(bad) - set(good))


def merge_checkpoints(groups: list[list[AnchoredCheckpoint]]) -> list[AnchoredCheckpoint]:
    """One entry per distinct checkpoint, its countersignatures pooled, ordered by height."""
    merged: dict[Checkpoint, dict[tuple[str, str], Countersignature]] = {}
    for group in groups:
        for anchored in group:
            pool = merged.setdefault(anchored.checkpoint, {})
            for cs in anchored.countersignatures:
                pool[(cs.silo, cs.signature)] = cs
    return [
        AnchoredCheckpoint(checkpoint=cp, countersignatures=tuple(pool.values()))
        for cp, pool in sorted(merged.items(), key=lambda item: item[0].height)
    ]


class CheckpointList(BaseModel):
    """``GET /v1/silo/ledger/checkpoints``: the checkpoints a silo has still to countersign,
    with the service's public key (hex) that a silo pins the first time it sees it."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    service_key: str
    checkpoints: list[Checkpoint]


class CountersignIn(BaseModel):
    """``POST /v1/silo/ledger/checkpoints/{height}/countersign``: the silo's signature (hex)
    over `countersign_message`."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    signature: str = Field(pattern=r"^[0-9a-f]{128}$", description="Ed25519 signature, hex")


# A silo's countersignatures ride on its next task poll (``GET /v1/silo/tasks?countersigned=``),
# and the checkpoints to countersign come with its tasks: two requests a silo-round fewer than
# fetching and posting them (bench/README.md, "fewer requests a round"). Items are
# ``<height>.<signature hex>`` joined by ``_``: unreserved URL characters only, so the path the
# silo signs is the path the service reads.
COUNTERSIGNED_PARAM = "countersigned"
MAX_COUNTERSIGNED_PER_POLL = 16
_ITEM = re.compile(r"^([1-9][0-9]{0,9})\.([0-9a-f]{128})$")


def encode_countersigned(items: Sequence[tuple[int, str]]) -> str:
    """The ``countersigned`` query value for (height, signature hex) pairs."""
    if not 1 <= len(items) <= MAX_COUNTERSIGNED_PER_POLL:
        raise ValueError(
            f"{len(items)} countersignatures: a poll carries 1 to {MAX_COUNTERSIGNED_PER_POLL}"
        )
    encoded = [f"{height}.{signature}" for height, signature in items]
    for item in encoded:
        if not _ITEM.match(item):
            raise ValueError(f"not a (height >= 1, 128 hex digits) countersignature: {item[:40]!r}")
    return "_".join(encoded)


def parse_countersigned(text: str) -> list[tuple[int, str]]:
    """(height, signature hex) pairs from a ``countersigned`` query value.

    Raises
    ------
    ValueError
        An item is not ``<height>.<128 hex digits>``, a height repeats, or there are more than
        `MAX_COUNTERSIGNED_PER_POLL`; the message names the first bad item.
    """
    items = text.split("_")
    if len(items) > MAX_COUNTERSIGNED_PER_POLL:
        raise ValueError(
            f"{len(items)} countersignatures in one poll (at most {MAX_COUNTERSIGNED_PER_POLL})"
        )
    pairs: list[tuple[int, str]] = []
    for k, item in enumerate(items):
        match = _ITEM.match(item)
        if match is None:
            raise ValueError(
                f"countersignature {k + 1} is not <height>.<128 hex digits>: {item[:40]!r}"
            )
        height = int(match.group(1))
        if height > INT32_MAX:
            raise ValueError(f"countersignature {k + 1}: height {height} is past {INT32_MAX}")
        pairs.append((height, match.group(2)))
    heights = [h for h, _ in pairs]
    if len(set(heights)) != len(heights):
        raise ValueError(f"a checkpoint height repeats among the countersignatures: {heights}")
    return pairs
