"""Verify a lineage ledger from its entries alone: chain, signatures, artifacts, silo copies.

Works on `schemas.lineage.LineageEntry` records (from the service database, an export file or
a silo's copy) and public keys; it never needs the service's database or secrets, so a
compliance reviewer can run it on an export months later.

Exports (`export_entries`, `load_export`) live in `aggregation.ledger_export` and are
re-exported here.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from pydantic import BaseModel, ConfigDict

from aggregation.ledger_export import (
    ExportError,
    ExportTruncatedError,
    export_entries,
    load_export,
)
from schemas.lineage import (
    GENESIS_HASH,
    SERVICE_AUTHOR,
    CanonicalJsonError,
    LineageEntry,
    LineageSignatureError,
    Receipt,
    Statement,
    entry_signing_message,
    is_canonical,
    parse_json,
    statement_message,
    verify_receipt,
    verify_signature,
)

__all__ = [
    "ArtifactChecker",
    "CrossCheckReport",
    "ExportError",
    "ExportTruncatedError",
    "SiloRecord",
    "VerifyReport",
    "cross_check",
    "directory_artifact_checker",
    "export_entries",
    "load_export",
    "verify_chain",
]

# Returns the current sha256 hex of the artifact stored at `path`, or None when it is missing.
ArtifactChecker = Callable[[str], str | None]


@dataclass(frozen=True)
class VerifyReport:
    """Outcome of `verify_chain`: ok, or the first bad entry and why."""

    ok: bool
    checked: int
    head_seq: int
    head_hash: str
    bad_seq: int | None = None
    reason: str | None = None

    def __str__(self) -> str:
        if self.ok:
            return f"ledger OK: {self.checked} entries, head {self.head_seq} {self.head_hash}"
        return f"ledger INVALID: {self.reason}"


# ----------------------------------------------------------------------------- chain structure


def _seq_problem(entry: LineageEntry, pos: int, expected: int, seq_pos: dict[int, int]) -> str:
    """Describe why the entry at `pos` does not carry the expected sequence number."""
    later = seq_pos.get(expected)
    if later is not None and later > pos:
        lo, hi = sorted((expected, entry.seq))
        return f"entries {lo} and {hi} out of order"
    if entry.seq > expected:
        return f"entry {expected} missing (seq jumps {expected - 1} -> {entry.seq})"
    return f"entry {expected}: found seq {entry.seq} again (duplicate or out of order)"


def _hash_problem(entry: LineageEntry, hash_seq: dict[str, int]) -> str:
    """Explain a hash mismatch: an entry moved to another seq, or altered content."""
    linked = hash_seq.get(entry.prev_hash)
    candidates = {entry.seq - 1, entry.seq + 1}
    if linked is not None:
        candidates.add(linked + 1)
    for other in sorted(candidates - {entry.seq}):
        if other >= 1 and entry.recompute_hash(other) == entry.entry_hash:
            lo, hi = sorted((entry.seq, other))
            return (
                f"entries {lo} and {hi} out of order (the entry stored as seq {entry.seq} "
                f"was written as seq {other})"
            )
    if not is_canonical(entry.payload):
        return f"entry {entry.seq}: payload is not canonical JSON (content altered)"
    return f"entry {entry.seq}: entry_hash mismatch (content altered)"


def _structure(entries: Sequence[LineageEntry]) -> tuple[int, str | None]:
    """First position whose seq, hash or link is wrong, with the reason; (len, None) if none."""
    seq_pos: dict[int, int] = {}
    for pos, entry in enumerate(entries):
        seq_pos.setdefault(entry.seq, pos)
    hash_seq = {e.entry_hash: e.seq for e in entries}
    prev = GENESIS_HASH
    for pos, entry in enumerate(entries):
        expected = pos + 1
        if entry.seq != expected:
            return pos, _seq_problem(entry, pos, expected, seq_pos)
        if entry.recompute_hash() != entry.entry_hash:
            return pos, _hash_problem(entry, hash_seq)
        if entry.prev_hash != prev:
            what = "the genesis hash" if expected == 1 else f"entry {expected - 1}'s hash"
            return pos, f"entry {expected}: prev_hash does not match {what} (chain broken)"
        prev = entry.entry_hash
    return len(entries), None


# ----------------------------------------------------------------------------- signatures

# (position, public key or None when unknown, signature hex, message, what it is)
_SigJob = tuple[int, Ed25519PublicKey | None, str | None, bytes, str]


def _sig_jobs(
    entries: Sequence[LineageEntry], stop: int, keys: dict[str, Ed25519PublicKey]
) -> list[_SigJob]:
    service_key = keys.get(SERVICE_AUTHOR)
    jobs: list[_SigJob] = []
    for pos in range(stop):
        entry = entries[pos]
        if entry.author != SERVICE_AUTHOR:
            sig = entry.author_signature
            msg = statement_message(
                run_id=entry.run_id, kind=entry.kind, payload=entry.payload, author=entry.author
            )
            jobs.append((pos, keys.get(entry.author), sig, msg, "author"))
        msg = entry_signing_message(entry.entry_hash)
        jobs.append((pos, service_key, entry.service_signature, msg, "service"))
    return jobs


def _first_bad_sig(jobs: list[_SigJob]) -> _SigJob | None:
    for job in jobs:
        pos, key, sig, msg, _ = job
        if key is None or not verify_signature(key, sig, msg):
            return job
    return None


def _check_signatures(jobs: list[_SigJob], workers: int) -> _SigJob | None:
    """First failing job in order; Ed25519 verification releases the GIL, so threads scale."""
    if workers <= 1 or len(jobs) < 2000:
        return _first_bad_sig(jobs)
    size = -(-len(jobs) // workers)
    chunks = [jobs[i : i + size] for i in range(0, len(jobs), size)]
    with ThreadPoolExecutor(max_workers=workers) as pool:
        results = list(pool.map(_first_bad_sig, chunks))
    return next((r for r in results if r is not None), None)


def _sig_reason(entry: LineageEntry, job: _SigJob) -> str:
    _, key, _, _, what = job
    signer = entry.author if what == "author" else SERVICE_AUTHOR
    if key is None:
        return (
            f"entry {entry.seq}: no public key for {signer}; pass it in public_keys to "
            "verify this entry"
        )
    return f"entry {entry.seq}: {signer} signature invalid"


# ----------------------------------------------------------------------------- artifacts


def _artifact_problem(entry: LineageEntry, checker: ArtifactChecker) -> str | None:
    try:
        payload = parse_json(entry.payload)
    except CanonicalJsonError:
        return f"entry {entry.seq}: model_saved payload is not JSON"
    path, recorded = (payload.get("path"), payload.get("sha256")) if payload else (None, None)
    if not isinstance(path, str) or not isinstance(recorded, str):
        return f"entry {entry.seq}: model_saved payload lacks 'path' and 'sha256'"
    actual = checker(path)
    if actual is None:
        return f"entry {entry.seq}: artifact {path} missing"
    if actual != recorded:
        return (
            f"entry {entry.seq}: artifact {path} sha256 mismatch (ledger {recorded[:12]}..., "
            f"file {actual[:12]}...; file replaced or altered)"
        )
    return None


def directory_artifact_checker(root: Path) -> ArtifactChecker:
    """An `ArtifactChecker` that hashes files under `root` (paths in the ledger are relative).

    Paths that escape `root` are reported missing rather than read.
    """
    base = root.resolve()

    def check(path: str) -> str | None:
        target = (base / path).resolve()
        if not target.is_relative_to(base) or not target.is_file():
            return None
        digest = hashlib.sha256()
        with target.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
        return digest.hexdigest()

    return check


# ----------------------------------------------------------------------------- verify


def verify_chain(
    entries: Sequence[LineageEntry],
    public_keys: dict[str, Ed25519PublicKey],
    artifact_checker: ArtifactChecker | None = None,
    *,
    workers: int | None = None,
) -> VerifyReport:
    """Re-check a whole ledger and name the first bad entry.

    Checks, per entry in the given order: seq continuity (1, 2, ...), entry_hash recomputed
    from the content, prev_hash linking to the previous entry, the silo author's statement
    signature, the service signature, and for ``model_saved`` entries the stored artifact's
    sha256 (when `artifact_checker` is given).

    Parameters
    ----------
    entries
        The ledger from seq 1, in stored order (do not sort: order is part of what is checked).
    public_keys
        ``{"service": key, "silo:<name>": key, ...}``; an author without a key fails.
    artifact_checker
        Called with a ``model_saved`` payload's ``path``; returns the file's sha256 or None.
    workers
        Threads for signature checks (default: CPU count).

    Returns
    -------
    VerifyReport
        ``ok`` with the head, or the first bad entry's seq and a precise reason.
    """
    stop, reason = _structure(entries)
    bad_pos = stop
    job = _check_signatures(_sig_jobs(entries, stop, public_keys), workers or os.cpu_count() or 1)
    if job is not None:
        bad_pos, reason = job[0], _sig_reason(entries[job[0]], job)
    if artifact_checker is not None:
        # Artifacts are checked last for an entry, so only entries before the first bad one.
        for pos in range(bad_pos):
            if entries[pos].kind == "model_saved":
                problem = _artifact_problem(entries[pos], artifact_checker)
                if problem is not None:
                    bad_pos, reason = pos, problem
                    break
    good = entries[:bad_pos]
    head_seq, head_hash = (good[-1].seq, good[-1].entry_hash) if good else (0, GENESIS_HASH)
    if reason is None:
        return VerifyReport(True, len(entries), head_seq, head_hash)
    return VerifyReport(False, bad_pos, head_seq, head_hash, bad_pos + 1, reason)


# ----------------------------------------------------------------------------- silo copies


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
