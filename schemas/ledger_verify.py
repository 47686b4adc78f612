"""Verify a lineage ledger from its entries alone: chain, signatures, artifacts, silo copies.

Works on `schemas.lineage.LineageEntry` records (from the service database, an export file or
a silo's copy) and public keys; it never needs the service's database or secrets, so a
compliance reviewer can run it on an export months later.

Exports (`export_entries`, `load_export`) live in `schemas.ledger_export` and are
re-exported here.
"""

from __future__ import annotations

import gc
import hashlib
import multiprocessing
import os
import threading
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from pydantic import BaseModel, ConfigDict

from schemas.ledger_export import (
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


def _first_link_problem(entries: Sequence[LineageEntry]) -> int:
    """First position whose seq or prev_hash is wrong (len when none): no hashing, cheap."""
    prev = GENESIS_HASH
    for pos, entry in enumerate(entries):
        if entry.seq != pos + 1 or entry.prev_hash != prev:
            return pos
        prev = entry.entry_hash
    return len(entries)


def _problem_at(
    entries: Sequence[LineageEntry], pos: int, keys: dict[str, Ed25519PublicKey]
) -> str | None:
    """Why the entry at `pos` is bad, checked in the order of the module's contract.

    Seq, then entry_hash, then the link to the previous entry, then the author's and the
    service's signatures: the first that fails names the entry.
    """
    entry, expected = entries[pos], pos + 1
    if entry.seq != expected:
        seq_pos: dict[int, int] = {}
        for i, other in enumerate(entries):
            seq_pos.setdefault(other.seq, i)
        return _seq_problem(entry, pos, expected, seq_pos)
    if entry.recompute_hash() != entry.entry_hash:
        return _hash_problem(entry, {e.entry_hash: e.seq for e in entries})
    prev = entries[pos - 1].entry_hash if pos else GENESIS_HASH
    if entry.prev_hash != prev:
        what = "the genesis hash" if expected == 1 else f"entry {expected - 1}'s hash"
        return f"entry {expected}: prev_hash does not match {what} (chain broken)"
    bad = _bad_signature(entry, keys)
    return None if bad is None else _sig_reason(entry, *bad)


# ----------------------------------------------------------------------------- signatures


def _bad_signature(
    entry: LineageEntry, keys: dict[str, Ed25519PublicKey]
) -> tuple[str, Ed25519PublicKey | None] | None:
    """("author" or "service", the key tried) for the entry's first failing signature."""
    if entry.author != SERVICE_AUTHOR:
        key = keys.get(entry.author)
        msg = statement_message(
            run_id=entry.run_id, kind=entry.kind, payload=entry.payload, author=entry.author
        )
        if key is None or not verify_signature(key, entry.author_signature, msg):
            return "author", key
    key = keys.get(SERVICE_AUTHOR)
    msg = entry_signing_message(entry.entry_hash)
    if key is None or not verify_signature(key, entry.service_signature, msg):
        return "service", key
    return None


def _scan(
    entries: Sequence[LineageEntry], lo: int, hi: int, keys: dict[str, Ed25519PublicKey]
) -> int | None:
    """First position in [lo, hi) whose content hash or a signature fails, or None.

    The expensive per-entry work (sha256, Ed25519), independent of every other entry, so
    ranges can be scanned in parallel.
    """
    for pos in range(lo, hi):
        entry = entries[pos]
        if entry.recompute_hash() != entry.entry_hash or _bad_signature(entry, keys):
            return pos
    return None


# Below this many entries a serial scan is quicker than starting workers.
PARALLEL_MIN_ENTRIES = 2000
# What forked scan workers read: inherited copy-on-write, so the entries are never pickled.
_FORK_SHARED: tuple[Sequence[LineageEntry], dict[str, Ed25519PublicKey]] | None = None


def _scan_in_child(conn: Connection, lo: int, hi: int) -> None:
    # A short-lived child: no garbage collection, which would touch (and copy) every page.
    gc.disable()
    assert _FORK_SHARED is not None
    entries, keys = _FORK_SHARED
    conn.send(_scan(entries, lo, hi, keys))
    conn.close()


def _scan_forked(
    entries: Sequence[LineageEntry], ranges: list[range], keys: dict[str, Ed25519PublicKey]
) -> list[int | None]:
    """Scan ranges[0] here and each other range in a forked child process (one per core).

    Processes rather than threads: hashing, message building and signature-string checks
    hold the GIL. A child that fails to answer has its range rescanned here.
    """
    global _FORK_SHARED
    context = multiprocessing.get_context("fork")
    _FORK_SHARED = (entries, keys)
    children = []
    try:
        for part in ranges[1:]:
            receiver, sender = context.Pipe(duplex=False)
            child = context.Process(target=_scan_in_child, args=(sender, part.start, part.stop))
            child.start()
            sender.close()
            children.append((child, receiver, part))
    finally:
        _FORK_SHARED = None
    results = [_scan(entries, ranges[0].start, ranges[0].stop, keys)]
    for child, receiver, part in children:
        try:
            results.append(receiver.recv())
        except EOFError:  # the child died (e.g. killed for memory): do its share here
            results.append(_scan(entries, part.start, part.stop, keys))
        receiver.close()
        child.join()
    return results


def _first_scan_problem(
    entries: Sequence[LineageEntry], stop: int, keys: dict[str, Ed25519PublicKey], workers: int
) -> int | None:
    """First position below `stop` whose hash or a signature fails, over `workers` cores."""
    if workers <= 1 or stop < PARALLEL_MIN_ENTRIES:
        return _scan(entries, 0, stop, keys)
    size = -(-stop // workers)
    ranges = [range(lo, min(lo + size, stop)) for lo in range(0, stop, size)]
    # Forking is only safe while no other thread might hold a lock the child would need.
    if "fork" in multiprocessing.get_all_start_methods() and threading.active_count() == 1:
        results = _scan_forked(entries, ranges, keys)
    else:
        # Ed25519 verification releases the GIL, so threads still share that part.
        with ThreadPoolExecutor(max_workers=workers) as pool:
            results = list(pool.map(lambda r: _scan(entries, r.start, r.stop, keys), ranges))
    return next((pos for pos in results if pos is not None), None)


def _sig_reason(entry: LineageEntry, what: str, key: Ed25519PublicKey | None) -> str:
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
        Processes (or threads, when other threads are running) that check hashes and
        signatures of a large ledger in parallel (default: CPU count).

    Returns
    -------
    VerifyReport
        ``ok`` with the head, or the first bad entry's seq and a precise reason.
    """
    # The first bad entry is the first position where seq/link (cheap, here) or hash and
    # signatures (expensive, on every core) fail; `_problem_at` then names what failed first.
    link_pos = _first_link_problem(entries)
    stop = min(link_pos + 1, len(entries))
    scan_pos = _first_scan_problem(entries, stop, public_keys, workers or os.cpu_count() or 1)
    bad_pos = link_pos if scan_pos is None else min(scan_pos, link_pos)
    reason = _problem_at(entries, bad_pos, public_keys) if bad_pos < len(entries) else None
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
