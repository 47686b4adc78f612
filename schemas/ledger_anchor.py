"""Check a ledger against its checkpoints: truncation and rewrites at or before them.

`verify_chain` proves a ledger is self-consistent; someone holding the service key can still
cut its tail or rewrite an entry and re-sign everything after it. A checkpoint countersigned by
a silo (`schemas.ledger_checkpoint`) fixes the ledger's height and head hash at that moment with
a key the service does not hold, so `check_anchors` finds both, including in entries only the
service wrote (metrics, run_finished).

Only a ``silo:<name>`` countersignature that verifies with the silo's public key makes a
checkpoint an anchor; the service signature alone proves nothing against an attacker with the
service key. It still binds everyone else: with the service key on record, a service-signed
checkpoint above the ledger's end, or naming another head at its height, shows that entries
were cut or rewritten (an export cut and its trailer fixed), and a checkpoint that key did not
sign is forged or belongs to another ledger.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from schemas.ledger_checkpoint import (
    AnchoredCheckpoint,
    Checkpoint,
    valid_countersigners,
    verify_checkpoint,
)
from schemas.lineage import SERVICE_AUTHOR, LineageEntry, LineageSignatureError

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
    # The silos whose countersignature of `highest` verifies, and the ledger's last seq.
    highest_by: tuple[str, ...] = ()
    end: int = 0

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
            span = self.uncovered()
            return (
                f"anchors OK: {self.anchors} countersigned checkpoints match the ledger (highest: "
                f"height {cp.height}, {cp.describe()}, countersigned by "
                f"{_by(self.highest_by)})"
                + (f"; {span} after it not covered by any anchor" if span else "")
            )
        return "anchors MISMATCH: " + "; ".join(self.problems)

    def uncovered(self) -> str | None:
        """``entries 10..11`` past the highest anchor; None when it is the ledger's end."""
        height = self.highest.checkpoint.height if self.highest is not None else 0
        if self.end <= height:
            return None
        return (
            f"entry {self.end}" if self.end == height + 1 else f"entries {height + 1}..{self.end}"
        )


def _by(silos: Sequence[str]) -> str:
    return ", ".join(silos)


def _service_signed(checkpoint: Checkpoint, service_key: Ed25519PublicKey) -> bool:
    try:
        verify_checkpoint(checkpoint, service_key)
    except LineageSignatureError:
        return False
    return True


def _anchor_problem(
    cp: Checkpoint, who: str, entries: Sequence[LineageEntry], last_good: int
) -> str | None:
    """Why the ledger contradicts `cp` (`who` signed it: ``countersigned by silo:a``)."""
    end = entries[-1].seq if entries else 0
    if cp.height > end:
        return (
            f"ledger ends at seq {end} but {cp.describe()} {who} says height {cp.height} with "
            f"head {cp.head_hash}: entries {end + 1}..{cp.height} (at least) were removed"
        )
    pos = cp.height - 1
    entry = entries[pos] if 0 <= pos < len(entries) else None
    if entry is None or entry.seq != cp.height:
        entry = next((e for e in entries if e.seq == cp.height), None)
    if entry is None:
        return f"entry {cp.height} missing; {cp.describe()} {who} names it"
    if entry.entry_hash == cp.head_hash:
        return None
    return (
        f"entry {cp.height}'s hash differs from the {cp.describe()} {who} (ledger "
        f"{entry.entry_hash}, checkpoint {cp.head_hash}): an entry in {last_good + 1}.."
        f"{cp.height} was rewritten or removed and the chain re-signed"
    )


def countersignature_problems(
    checkpoints: Sequence[AnchoredCheckpoint],
    keys: dict[str, Ed25519PublicKey],
    *,
    source: str = "copy",
) -> list[str]:
    """Countersignatures that do not count: not a silo's, or not verifying with its key.

    For a silo's own copy, whose countersignatures the silo made itself, each one means the
    silo's key on record was replaced or the copy was edited; in an export (`source`
    ``"export"``) the service refuses such a countersignature, so the export was edited.
    """
    problems = []
    for anchored in sorted(checkpoints, key=lambda a: a.checkpoint.height):
        _, bad = valid_countersigners(anchored, keys)
        cp = anchored.checkpoint
        silos = [name for name in bad if name.startswith("silo:")]
        others = [name for name in bad if not name.startswith("silo:")]
        if silos:
            problems.append(
                f"{cp.describe()} at height {cp.height}: countersignature of {_by(silos)} does "
                f"not verify with the silo key on record (key replaced, or {source} edited)"
            )
        if others:
            problems.append(
                f"{cp.describe()} at height {cp.height}: countersigned by {_by(others)}, which "
                f"is not a silo (only silos countersign; {source} forged or edited)"
            )
    return problems


def check_anchors(
    entries: Sequence[LineageEntry],
    checkpoints: Sequence[AnchoredCheckpoint],
    keys: dict[str, Ed25519PublicKey],
) -> AnchorReport:
    """Compare the ledger with every checkpoint whose signatures can be checked.

    Parameters
    ----------
    entries
        The ledger from seq 1 (as for `verify_chain`).
    checkpoints
        Checkpoints with their countersignatures (silo copies, an export); merge several
        sources with `merge_checkpoints` first. A checkpoint without a countersignature that
        verifies with `keys` is not an anchor (the service key alone proves nothing against
        its holder), but with the service key in `keys` it is still compared (module
        docstring).
    keys
        ``{"service": key, "silo:<name>": key, ...}``: the keys signatures are checked with;
        without ``service``, service signatures are not checked.

    Returns
    -------
    AnchorReport
        Each problem names the checkpoint (run, round, height, head) and who signed it,
        earliest height first.
    """
    service_key = keys.get(SERVICE_AUTHOR)
    problems: list[str] = []
    anchors, unanchored, highest, highest_by = 0, 0, None, []
    last_good = 0
    for anchored in sorted(checkpoints, key=lambda a: a.checkpoint.height):
        cp = anchored.checkpoint
        if service_key is not None and not _service_signed(cp, service_key):
            problems.append(
                f"{cp.describe()} at height {cp.height}: not signed by this ledger's service "
                "key (forged, or a checkpoint of another ledger)"
            )
            continue
        good, _ = valid_countersigners(anchored, keys)
        if good:
            anchors += 1
        else:
            unanchored += 1
            if service_key is None:
                continue  # no signature on it can be checked: it proves nothing
        who = f"countersigned by {_by(good)}" if good else "signed by the service alone"
        problem = _anchor_problem(cp, who, entries, last_good)
        if problem is not None:
            problems.append(problem)
        elif good:
            last_good, highest, highest_by = cp.height, anchored, good
    end = entries[-1].seq if entries else 0
    return AnchorReport(
        not problems, anchors, highest, tuple(problems), unanchored, tuple(highest_by), end
    )
