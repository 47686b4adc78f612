"""Check a ledger against countersigned checkpoints: truncation and rewrites at or before them.

`verify_chain` proves a ledger is self-consistent; someone holding the service key can still
cut its tail or rewrite an entry and re-sign everything after it. A checkpoint countersigned by
a silo (`schemas.ledger_checkpoint`) fixes the ledger's height and head hash at that moment with
a key the service does not hold, so `check_anchors` finds both, including in entries only the
service wrote (metrics, run_finished).

Only a countersignature that verifies with the silo's public key makes a checkpoint an anchor;
the service signature alone proves nothing against an attacker with the service key.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from schemas.ledger_checkpoint import AnchoredCheckpoint, valid_countersigners
from schemas.lineage import LineageEntry

__all__ = ["AnchorReport", "check_anchors", "countersignature_problems"]


@dataclass(frozen=True)
class AnchorReport:
    """Outcome of `check_anchors`: problems (earliest height first) and what anchored."""

    ok: bool
    anchors: int
    highest: AnchoredCheckpoint | None
    problems: tuple[str, ...] = ()
    # Checkpoints with no valid countersignature: not anchors, listed for the reviewer.
    unanchored: int = 0

    def __str__(self) -> str:
        if not self.anchors and self.ok:
            return (
                "no countersigned checkpoint given: removing or rewriting the newest entries "
                "(service-only ones included) would go unnoticed; pass the silos' copies"
                + (
                    f" ({self.unanchored} checkpoints carry no valid silo countersignature)"
                    if self.unanchored
                    else ""
                )
            )
        if self.ok and self.highest is not None:
            cp = self.highest.checkpoint
            return (
                f"anchors OK: {self.anchors} countersigned checkpoints match the ledger (highest: "
                f"height {cp.height}, {cp.describe()}, countersigned by "
                f"{_by(sorted({c.silo for c in self.highest.countersignatures}))})"
            )
        return "anchors MISMATCH: " + "; ".join(self.problems)


def _by(silos: list[str]) -> str:
    return ", ".join(silos)


def _anchor_problem(
    anchored: AnchoredCheckpoint,
    silos: list[str],
    entries: Sequence[LineageEntry],
    last_good: int,
) -> str | None:
    cp = anchored.checkpoint
    end = entries[-1].seq if entries else 0
    if cp.height > end:
        return (
            f"ledger ends at seq {end} but {cp.describe()} countersigned by {_by(silos)} says "
            f"height {cp.height} with head {cp.head_hash}: entries {end + 1}..{cp.height} "
            "(at least) were removed"
        )
    pos = cp.height - 1
    entry = entries[pos] if 0 <= pos < len(entries) else None
    if entry is None or entry.seq != cp.height:
        entry = next((e for e in entries if e.seq == cp.height), None)
    if entry is None:
        return f"entry {cp.height} missing; {cp.describe()} countersigned by {_by(silos)} names it"
    if entry.entry_hash == cp.head_hash:
        return None
    return (
        f"entry {cp.height}'s hash differs from the {cp.describe()} countersigned by "
        f"{_by(silos)} (ledger {entry.entry_hash}, checkpoint {cp.head_hash}): an entry in "
        f"{last_good + 1}..{cp.height} was rewritten or removed and the chain re-signed"
    )


def countersignature_problems(
    checkpoints: Sequence[AnchoredCheckpoint], keys: dict[str, Ed25519PublicKey]
) -> list[str]:
    """Countersignatures that do not verify with the silo's key on record.

    For a silo's own copy, whose countersignatures the silo made itself, each one means the
    silo's key on record was replaced or the copy was edited.
    """
    problems = []
    for anchored in sorted(checkpoints, key=lambda a: a.checkpoint.height):
        _, bad = valid_countersigners(anchored, keys)
        if bad:
            cp = anchored.checkpoint
            problems.append(
                f"{cp.describe()} at height {cp.height}: countersignature of {_by(bad)} does "
                "not verify with the silo key on record (key replaced, or copy edited)"
            )
    return problems


def check_anchors(
    entries: Sequence[LineageEntry],
    checkpoints: Sequence[AnchoredCheckpoint],
    keys: dict[str, Ed25519PublicKey],
) -> AnchorReport:
    """Compare the ledger with every countersigned checkpoint.

    Parameters
    ----------
    entries
        The ledger from seq 1 (as for `verify_chain`).
    checkpoints
        Checkpoints with their countersignatures (silo copies, an export); merge several
        sources with `merge_checkpoints` first. A checkpoint without a countersignature that
        verifies with `keys` is not an anchor (the service key alone proves nothing).
    keys
        ``{"silo:<name>": key, ...}``: the keys countersignatures are checked with.

    Returns
    -------
    AnchorReport
        Each problem names the checkpoint (run, round, height, head) and who countersigned it,
        earliest height first.
    """
    problems: list[str] = []
    anchors, unanchored, highest = 0, 0, None
    last_good = 0
    for anchored in sorted(checkpoints, key=lambda a: a.checkpoint.height):
        good, _ = valid_countersigners(anchored, keys)
        if not good:
            unanchored += 1
            continue
        anchors += 1
        problem = _anchor_problem(anchored, good, entries, last_good)
        if problem is not None:
            problems.append(problem)
            continue
        last_good = anchored.checkpoint.height
        highest = anchored
    return AnchorReport(not problems, anchors, highest, tuple(problems), unanchored)
