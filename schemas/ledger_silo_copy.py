"""Cross-check a silo's own copy of its ledger entries against the service's ledger.

A silo keeps, for every entry it authored, its signed statement and the service's receipt
(`SiloRecord`); `cross_check` finds entries the service dropped or rewrote, receipts that do not
verify, and entries the service attributes to the silo that it never submitted.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from pydantic import BaseModel, ConfigDict

from schemas.lineage import (
    LineageEntry,
    LineageSignatureError,
    Receipt,
    Statement,
    verify_receipt,
)

__all__ = ["CrossCheckReport", "SiloRecord", "cross_check"]


class SiloRecord(BaseModel):
    """One entry a silo authored, as kept in its workspace: statement, signature, receipt."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    statement: Statement
    author_signature: str
    receipt: Receipt


@dataclass(frozen=True)
class CrossCheckReport:
    """Outcome of `cross_check`: ok, or every discrepancy found (first is the earliest)."""

    ok: bool
    checked: int
    problems: tuple[str, ...] = ()

    def __str__(self) -> str:
        if self.ok and not self.checked:
            return "silo copy holds no receipted entries: nothing of it was cross-checked"
        if self.ok:
            return f"silo copy OK: {self.checked} receipted entries match the service ledger"
        return "silo copy MISMATCH: " + "; ".join(self.problems)


def _record_problem(
    record: SiloRecord, entry: LineageEntry | None, service_key: Ed25519PublicKey | None
) -> str | None:
    seq, author = record.receipt.seq, record.statement.author
    if service_key is not None:
        try:
            verify_receipt(record.receipt, record.statement, record.author_signature, service_key)
        except LineageSignatureError as exc:
            return f"silo copy of entry {seq}: {exc}"
    if entry is None:
        return f"entry {seq} authored by {author} is missing from the service ledger (dropped)"
    if entry.entry_hash == record.receipt.entry_hash:
        return None
    fields = {
        "run_id": record.statement.run_id,
        "kind": record.statement.kind,
        "payload": record.statement.payload,
        "author": author,
        "author_signature": record.author_signature,
        "prev_hash": record.receipt.prev_hash,
        "created_at": record.receipt.created_at,
    }
    changed = [name for name, value in fields.items() if getattr(entry, name) != value]
    return (
        f"entry {seq} authored by {author} differs from the receipted copy "
        f"({', '.join(changed) or 'entry_hash'} changed): the service rewrote history"
    )


def cross_check(
    silo_records: Iterable[SiloRecord],
    service_entries: Sequence[LineageEntry],
    *,
    service_public_key: Ed25519PublicKey | None = None,
) -> CrossCheckReport:
    """Compare a silo's own copy with the service's ledger.

    Detects entries the silo authored that the service dropped or rewrote, receipts that do
    not verify (with `service_public_key`), and entries the service attributes to the silo
    that the silo never submitted.
    """
    records = sorted(silo_records, key=lambda r: r.receipt.seq)
    by_seq = {e.seq: e for e in service_entries}
    problems = [
        p
        for r in records
        if (p := _record_problem(r, by_seq.get(r.receipt.seq), service_public_key)) is not None
    ]
    authors = {r.statement.author for r in records}
    receipted = {r.receipt.seq for r in records}
    for entry in service_entries:
        if entry.author in authors and entry.seq not in receipted:
            problems.append(
                f"entry {entry.seq} claims author {entry.author} but the silo's copy has no "
                "receipt for it (entry not submitted by the silo, or its copy is incomplete)"
            )
    return CrossCheckReport(not problems, len(records), tuple(problems))
