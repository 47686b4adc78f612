"""A round's new global model: the stored version and its ledger pair (aggregate, model_saved).

Every engine that ends a training round with a model calls `save_round_model`, so the pair is
written the same way whatever the mode: the ``aggregate`` entry (the engine's own payload:
contributors, digests, what the service saw), then the model file and its ``model_saved``
entry naming the file's sha256, all inside the round's transaction, and a signed ledger
checkpoint for the participating silos to countersign (`checkpoints`) when that transaction
commits, at its last entry.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from aggregation.service.exceptions import Conflict
from aggregation.service.lineage import Recorder
from aggregation.service.tables import ModelVersion, Round, Run


def save_round_model(
    s: Session,
    run: Run,
    rnd: Round,
    payload: bytes,
    sha256: str,
    aggregate_entry: dict[str, Any],
    recorder: Recorder,
) -> None:
    """Store `payload` as model version `rnd.number` and append its ledger pair.

    Raises
    ------
    Conflict
        The run already has that model version (the round was closed before).
    """
    if s.get(ModelVersion, (run.id, rnd.number)) is not None:
        raise Conflict(f"run {run.id} already has model version {rnd.number}")
    s.add(ModelVersion(run_id=run.id, version=rnd.number, sha256=sha256, payload=payload))
    run.latest_model_version = rnd.number
    rnd.model_version = rnd.number
    recorder.service(s, "aggregate", aggregate_entry, run.id)
    record_model_saved(s, recorder, run.id, rnd.number, payload, sha256)
    # The round's close is anchored: silos countersign the head this transaction wrote (at
    # commit, so the entries written after the model are anchored by the same checkpoint).
    recorder.checkpoint_at_commit(s, run.id, rnd.number, "round_closed")


def record_model_saved(
    s: Session, recorder: Recorder, run_id: str, version: int, payload: bytes, sha256: str
) -> str:
    """Write the model file and its ``model_saved`` entry; returns the file's relative path."""
    path = recorder.write_model(run_id, version, payload)
    entry = {"round": version, "version": version, "sha256": sha256, "path": path}
    recorder.service(s, "model_saved", entry, run_id)
    return path
