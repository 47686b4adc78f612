"""Ledger checkpoints at the service: publish, list for a silo, store countersignatures.

The service publishes a signed checkpoint (`schemas.ledger_checkpoint`) inside the transaction
that closes a round, fails one or ends a run, so it names the head that transaction wrote.
Silos fetch the ones they have not countersigned and send their countersignatures back; those
are checked against the silo's registered key before they are stored. The tables here are a
convenience for export: the anchor is the silos' own copies, which the service cannot edit.
"""

from __future__ import annotations

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from sqlalchemy import select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from aggregation.service import ledger
from aggregation.service.exceptions import InvalidPayload, NotFound
from aggregation.service.tables import LedgerCheckpoint, LedgerCountersignature, Run, RunSilo
from schemas.ledger_checkpoint import (
    AnchoredCheckpoint,
    Checkpoint,
    CheckpointSigner,
    Countersignature,
    countersign_message,
    make_checkpoint,
)
from schemas.lineage import verify_signature

MAX_LISTED = 1000


def _row_to_model(row: LedgerCheckpoint) -> Checkpoint:
    return Checkpoint(
        height=row.height,
        head_hash=row.head_hash,
        run_id=row.run_id,
        round=row.round,
        event=row.event,
        created_at=row.created_at,
        service_signature=row.service_signature,
    )


def publish(
    s: Session,
    signer: CheckpointSigner,
    *,
    run_id: str | None,
    round: int | None,
    event: str,
    height: int | None = None,
    head_hash: str | None = None,
) -> Checkpoint | None:
    """Sign and store a checkpoint of the ledger at `height` (default: the current head).

    A height that already has a checkpoint keeps it (a retried close, or a failed round with
    no new entry since the last one); returns None then, or for an empty ledger.
    """
    if height is None or head_hash is None:
        last = ledger.head(s)
        if last is None:
            return None
        height, head_hash = last.seq, last.entry_hash
    checkpoint = make_checkpoint(
        signer, height=height, head_hash=head_hash, run_id=run_id, round=round, event=event
    )
    values = checkpoint.model_dump()
    dialect = s.get_bind().dialect.name
    stmt = (postgresql.insert if dialect == "postgresql" else sqlite.insert)(LedgerCheckpoint)
    result = s.execute(stmt.values(**values).on_conflict_do_nothing(index_elements=["height"]))
    return checkpoint if getattr(result, "rowcount", 1) == 1 else None


def pending_for_silo(s: Session, federation: str, silo: str, *, after: int = 0) -> list[Checkpoint]:
    """Checkpoints past `after` of runs `silo` takes part in that it has not countersigned."""
    runs = (
        select(RunSilo.run_id)
        .join(Run, Run.id == RunSilo.run_id)
        .where(RunSilo.silo == silo, Run.federation == federation)
    )
    signed = select(LedgerCountersignature.height).where(
        LedgerCountersignature.silo == f"silo:{silo}"
    )
    rows = s.scalars(
        select(LedgerCheckpoint)
        .where(LedgerCheckpoint.height > after)
        .where(LedgerCheckpoint.run_id.in_(runs))
        .where(LedgerCheckpoint.height.not_in(signed))
        .order_by(LedgerCheckpoint.height)
        .limit(MAX_LISTED)
    )
    return [_row_to_model(row) for row in rows]


def add_countersignature(
    s: Session, *, height: int, silo: str, signature: str, silo_key: Ed25519PublicKey
) -> Countersignature:
    """Store `silo`'s countersignature of the checkpoint at `height` after checking it.

    Raises
    ------
    NotFound
        No checkpoint at that height.
    InvalidPayload
        The signature does not verify with the silo's registered key.
    """
    row = s.get(LedgerCheckpoint, height)
    if row is None:
        raise NotFound(f"no ledger checkpoint at height {height}")
    author = f"silo:{silo}"
    if not verify_signature(silo_key, signature, countersign_message(_row_to_model(row), author)):
        raise InvalidPayload(
            f"countersignature of silo {silo} for the checkpoint at height {height} does not "
            "verify with its registered key; sign schemas.ledger_checkpoint.countersign_message"
        )
    existing = s.get(LedgerCountersignature, (height, author))
    if existing is None:
        s.add(LedgerCountersignature(height=height, silo=author, signature=signature))
    return Countersignature(silo=author, signature=signature)


def anchored(s: Session) -> list[AnchoredCheckpoint]:
    """Every checkpoint with its countersignatures, by height (for the ledger export)."""
    signatures: dict[int, list[Countersignature]] = {}
    for cs in s.scalars(select(LedgerCountersignature).order_by(LedgerCountersignature.silo)):
        signatures.setdefault(cs.height, []).append(
            Countersignature(silo=cs.silo, signature=cs.signature)
        )
    return [
        AnchoredCheckpoint(
            checkpoint=_row_to_model(row), countersignatures=tuple(signatures.get(row.height, []))
        )
        for row in s.scalars(select(LedgerCheckpoint).order_by(LedgerCheckpoint.height))
    ]
