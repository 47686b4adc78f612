"""Verify a lineage ledger from its entries alone: chain, signatures, artifacts, silo copies.

Works on `schemas.lineage.LineageEntry` records (from the service database, an export file or
a silo's copy) and public keys; it never needs the service's database or secrets, so a
compliance reviewer can run it on an export months later.

This module holds the chain's structure (seq, links), the artifact check and `verify_chain`;
the parallel hash and signature scan is in `schemas.ledger_scan`, silo copies
(`SiloRecord`, `cross_check`) in `schemas.ledger_silo_copy` and exports (`export_entries`,
`load_export`) in `schemas.ledger_export`, all re-exported here.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from schemas.ledger_export import (
    ExportError,
    ExportTruncatedError,
    export_entries,
    load_export,
)
from schemas.ledger_scan import bad_signature, first_scan_problem
from schemas.ledger_silo_copy import CrossCheckReport, SiloRecord, cross_check
from schemas.lineage import (
    GENESIS_HASH,
    SERVICE_AUTHOR,
    CanonicalJsonError,
    LineageEntry,
    is_canonical,
    parse_json,
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


def _seq_problem(
    entries: Sequence[LineageEntry], pos: int, expected: int, seq_pos: dict[int, int]
) -> str:
    """Describe why the entry at `pos` does not carry the expected sequence number.

    `seq_pos` maps each seq to the first position holding it; positions before `pos` hold
    1..pos in order (`pos` is the first bad one).
    """
    entry = entries[pos]
    if entry.seq < 1:
        return f"entry {expected}: seq {entry.seq} is not a ledger seq (the ledger starts at 1)"
    first = seq_pos[entry.seq]
    if first < pos:
        twice = "appears twice" if entries[first] == entry else "is claimed by two entries"
        return f"entry {entry.seq} {twice} (stored at positions {first + 1} and {pos + 1})"
    later = seq_pos.get(expected)
    if later is not None and later > pos:
        if later == entry.seq - 1:  # each stands where the other belongs
            return f"entries {expected} and {entry.seq} out of order"
        return f"entry {expected} out of order (stored at position {later + 1})"
    if entry.seq > expected:
        return f"entry {expected} missing (seq jumps {expected - 1} -> {entry.seq})"
    return f"entry {expected}: found seq {entry.seq} (out of order)"


def _hash_problem(entry: LineageEntry, hash_seq: dict[str, int]) -> str:
    """Explain a hash mismatch: an entry moved to another seq, or altered content."""
    linked = hash_seq.get(entry.prev_hash)
    candidates = {entry.seq - 1, entry.seq + 1}
    if linked is not None:
        candidates.add(linked + 1)
    for other in sorted(candidates - {entry.seq}):
        if other >= 1 and entry.recompute_hash(other) == entry.entry_hash:
            if other == entry.seq + 1 and linked is None:
                # Written one seq later, after an entry no longer in the ledger: that entry
                # was removed and the ones after it renumbered.
                return (
                    f"entry {entry.seq} missing: the entries after {entry.seq - 1} were "
                    f"renumbered (the one stored as seq {entry.seq} was written as seq {other})"
                )
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
        return _seq_problem(entries, pos, expected, seq_pos)
    if entry.recompute_hash() != entry.entry_hash:
        return _hash_problem(entry, {e.entry_hash: e.seq for e in entries})
    prev = entries[pos - 1].entry_hash if pos else GENESIS_HASH
    if entry.prev_hash != prev:
        what = "the genesis hash" if expected == 1 else f"entry {expected - 1}'s hash"
        return f"entry {expected}: prev_hash does not match {what} (chain broken)"
    bad = bad_signature(entry, keys)
    return None if bad is None else _sig_reason(entry, *bad)


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
    if not isinstance(payload, dict):
        return f"entry {entry.seq}: model_saved payload is not a JSON object"
    path, recorded = payload.get("path"), payload.get("sha256")
    if not isinstance(path, str) or not isinstance(recorded, str):
        return f"entry {entry.seq}: model_saved payload lacks 'path' and 'sha256'"
    if "\x00" in path:
        return f"entry {entry.seq}: model_saved path {path!r} holds a NUL byte (no file has it)"
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

    Paths that escape `root`, or hold a NUL byte, are reported missing rather than read.
    """
    base = root.resolve()

    def check(path: str) -> str | None:
        if "\x00" in path:  # no file name holds one (and the OS calls refuse it)
            return None
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
    scan_pos = first_scan_problem(entries, stop, public_keys, workers or os.cpu_count() or 1)
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
