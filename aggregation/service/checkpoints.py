"""Ledger checkpoints at the service: publish, list for a silo, store countersignatures.

The service publishes a signed checkpoint (`schemas.ledger_checkpoint`) inside the transaction
that closes a round, fails one or ends a run, so it names the head that transaction wrote.
Silos fetch the ones they have not countersigned and send their countersignatures back; those
are checked against the silo's registered key before they are stored. The tables here are a
convenience for export: the anchor is the silos' own copies, which the service cannot edit.
"""

from __future__ import annotations

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from sqlalchemy import func, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from aggregation.service import ledger
from aggregation.service.exceptions import InvalidPayload, NotFound
from aggregation.service.federations import find_silo
from aggregation.service.tables import LedgerCheckpoint, LedgerCountersignature, Run, RunSilo
from schemas.ledger_checkpoint import (
    AnchoredCheckpoint,
    Checkpoint,
    CheckpointList,
    CheckpointSigner,
    Countersignature,
    countersign_message,
    make_checkpoint,
)
from schemas.lineage import verify_signature
from schemas.tasks import Task

MAX_LISTED = 1000
MAX_ON_TASK = 16  # a backlog goes out over several tasks, oldest first


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


def pending_for_silo(
    s: Session, federation: str, silo: str, *, after: int = 0, limit: int = MAX_LISTED
) -> list[Checkpoint]:
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
        .limit(limit)
    )
    return [_row_to_model(row) for row in rows]


def with_pending(s: Session, task: Task, federation: str, silo: str, service_key: str) -> Task:
    """`task` carrying the checkpoints above the highest one `silo` countersigned (one that
    anchors every entry below it, so older unsigned ones are not asked for again)."""
    signed = select(func.max(LedgerCountersignature.height)).where(
        LedgerCountersignature.silo == f"silo:{silo}"
    )
    published = select(func.max(LedgerCheckpoint.height))
    latest, newest = s.execute(select(signed.scalar_subquery(), published.scalar_subquery())).one()
    if newest is None or newest <= (latest or 0):  # two index reads: most tasks stop here
        return task
    pending = pending_for_silo(s, federation, silo, after=latest or 0, limit=MAX_ON_TASK)
    if not pending:
        return task
    listing = CheckpointList(service_key=service_key, checkpoints=pending)
    return task.model_copy(update={"checkpoints": listing})


def add_countersignatures(
    s: Session, federation: str, silo: str, pairs: list[tuple[int, str]]
) -> list[str]:
    """Store the countersignatures a silo's task poll carried; returns why any was refused
    (no such checkpoint, or a signature its registered key does not verify). A refused one
    is only reported: the poll goes on, and the silo's own copy stays its anchor."""
    row = find_silo(s, federation, silo)
    assert row is not None  # the poll's signature was checked against this row
    key = Ed25519PublicKey.from_public_bytes(bytes.fromhex(row.public_key))
    problems = []
    for height, signature in pairs:
        try:
            add_countersignature(s, height=height, silo=silo, signature=signature, silo_key=key)
        except (NotFound, InvalidPayload) as exc:
            problems.append(str(exc))
    return problems


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
