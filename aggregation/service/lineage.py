"""What the service writes to the lineage ledger, one function per event.

Every function appends inside the caller's transaction, so an event is in the ledger exactly
when the state change it describes is committed.
"""

from __future__ import annotations

import hashlib
import subprocess
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from sqlalchemy import event
from sqlalchemy.orm import Session

from aggregation.service import checkpoints, ledger
from aggregation.service.tables import Round
from schemas.canonical import canonical_json
from schemas.lineage import EntrySigner, LineageEntry, Receipt

# Run-ending entries are checkpointed where they are written (anchoring everything before);
# the checkpoint's event is the entry's kind.
_CHECKPOINTED_KINDS = frozenset({"run_finished", "run_failed", "run_cancelled"})


_PENDING_CHECKPOINT = "fedsilo.pending_checkpoint"


@event.listens_for(Session, "before_commit")
def _publish_pending_checkpoint(s: Session) -> None:
    """`Recorder.checkpoint_at_commit`'s checkpoint, inside the committing transaction (a
    checkpoint the transaction already published at the same head is kept, not doubled)."""
    pending = s.info.pop(_PENDING_CHECKPOINT, None)
    if pending is not None:
        recorder, run_id, round_, kind = pending
        recorder.checkpoint(s, run_id, round_, kind)


@event.listens_for(Session, "after_rollback")
def _drop_pending_checkpoint(s: Session) -> None:
    s.info.pop(_PENDING_CHECKPOINT, None)


@dataclass(frozen=True)
class Recorder:
    """Writes the service's and silos' ledger entries and the service's checkpoints.

    ``service_key`` is an ``Ed25519PrivateKey`` or a signer hook (`keys.load_service_signer`).
    """

    service_key: EntrySigner
    workspace: Path

    def service(
        self, s: Session, kind: str, payload: dict[str, Any], run_id: str | None
    ) -> LineageEntry:
        entry = ledger.append(
            s,
            kind=kind,
            payload=payload,
            run_id=run_id,
            author="service",
            service_key=self.service_key,
        )
        if kind in _CHECKPOINTED_KINDS:
            self.checkpoint(s, run_id, None, kind, entry)
        return entry

    def checkpoint_round(self, s: Session, rnd: Round) -> None:
        """Checkpoint the ledger's head once `rnd` closed or failed (after all it wrote); a
        round still open (a secure stage waits for answers) gets none yet."""
        if rnd.status == "open":
            return
        event = "round_failed" if rnd.status == "failed" else "round_closed"
        self.checkpoint(s, rnd.run_id, rnd.number, event)

    def checkpoint_at_commit(self, s: Session, run_id: str, round_: int, event: str) -> None:
        """Publish one checkpoint (`checkpoint`) at the ledger's head when `s` commits.

        A round's close writes entries after its model (metrics, rejections, the next
        engine step): one checkpoint at the transaction's last entry anchors them all, where
        one at the model and another at the end made every silo countersign twice a round.
        """
        s.info[_PENDING_CHECKPOINT] = (self, run_id, round_, event)

    def checkpoint(
        self,
        s: Session,
        run_id: str | None,
        round_: int | None,
        event: str,
        entry: LineageEntry | None = None,
    ) -> None:
        """Publish a signed checkpoint at `entry` (default: the ledger's head) for silos to
        countersign (`checkpoints.publish`)."""
        checkpoints.publish(
            s,
            self.service_key,
            run_id=run_id,
            round=round_,
            event=event,
            height=entry.seq if entry is not None else None,
            head_hash=entry.entry_hash if entry is not None else None,
        )

    def silo(
        self,
        s: Session,
        kind: str,
        payload: dict[str, Any],
        run_id: str,
        silo: str,
        signature: str,
        public_key_hex: str,
    ) -> tuple[LineageEntry, Receipt]:
        """Append a silo-authored statement (its signature is checked) and return the receipt."""
        entry = ledger.append(
            s,
            kind=kind,
            payload=payload,
            run_id=run_id,
            author=f"silo:{silo}",
            service_key=self.service_key,
            author_signature=signature,
            author_key=Ed25519PublicKey.from_public_bytes(bytes.fromhex(public_key_hex)),
        )
        return entry, ledger.receipt(entry, self.service_key)

    def model_path(self, run_id: str, version: int) -> str:
        """Where a model version's file lives, relative to the workspace (as the ledger says)."""
        return f"models/{run_id}/v{version}.safetensors"

    def write_model(self, run_id: str, version: int, payload: bytes) -> str:
        rel = self.model_path(run_id, version)
        target = self.workspace / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_suffix(".tmp")
        tmp.write_bytes(payload)
        tmp.replace(target)
        return rel


def config_sha256(spec_json: dict[str, Any]) -> str:
    return hashlib.sha256(canonical_json(spec_json).encode()).hexdigest()


def fedsilo_version() -> str:
    try:
        return metadata.version("fedsilo")
    except metadata.PackageNotFoundError:
        return "unknown"


def git_commit() -> str | None:
    """The commit of the installed source tree, when it is a git checkout."""
    root = Path(__file__).resolve().parents[2]
    try:
        out = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None
