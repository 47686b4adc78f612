"""The trained update a silo keeps while it waits for an asynchronous secure buffer's cohort.

In an asynchronous run with secure aggregation the silo trains, keeps its delta here (0600,
in the workspace) and announces that it is ready; when its cohort's masked stage comes, it
masks this delta (`silos.handlers.buffered`). One kept update per run: a newer one replaces
it. It is erased once masked and sent, and with the run's other secure-aggregation state
(`secure_round.erase_run_state`) when the run ends or the silo's part of it fails.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from schemas import tensors
from schemas.exceptions import TensorFormatError
from schemas.specs import RunSpec, param_shapes
from schemas.wire import Metrics
from silos.exceptions import BufferedUpdateMissing
from silos.files import erase, private_dir, write_private


@dataclass(frozen=True)
class Kept:
    """A trained update and its bookkeeping (the fields of `handlers.training.Trained`)."""

    delta: list[np.ndarray]
    n_examples: int
    seconds: float
    metrics: Metrics  # the base model on the silo's holdout


FOLDER = "secagg-buffered"


def _path(workspace: Path, run_id: str) -> Path:
    return private_dir(workspace / FOLDER) / f"{run_id}.tensors"


def keep(workspace: Path, run_id: str, base_round: int, spec: RunSpec, trained: Kept) -> str:
    """Store `trained` for run `run_id` (replacing a waiting one); returns its digest."""
    names = [n for n, _ in param_shapes(spec.torch_model)]
    payload = tensors.encode(
        dict(zip(names, trained.delta, strict=True)),
        {
            "run_id": run_id,
            "round": str(base_round),
            "n_examples": str(trained.n_examples),
            "train_seconds": f"{trained.seconds:.6f}",
            "metrics": trained.metrics.model_dump_json(),
        },
    )
    write_private(_path(workspace, run_id), payload)
    return tensors.digest(payload)


def load(workspace: Path, run_id: str, base_round: int, spec: RunSpec) -> Kept:
    """The kept update trained for `base_round` (BufferedUpdateMissing if there is none)."""
    path = _path(workspace, run_id)
    try:
        delta, meta = tensors.decode_expected(path.read_bytes(), param_shapes(spec.torch_model))
    except (FileNotFoundError, TensorFormatError) as exc:
        raise BufferedUpdateMissing(
            f"run {run_id}: no usable kept update for round {base_round} at {path} ({exc}); "
            "this silo drops out of the buffer and trains anew for the next one"
        ) from exc
    if int(meta["round"]) != base_round:
        raise BufferedUpdateMissing(
            f"run {run_id}: the kept update at {path} was trained for round {meta['round']}, "
            f"the buffer's cohort expects round {base_round}; this silo drops out of the "
            "buffer and trains anew"
        )
    metrics = Metrics.model_validate_json(meta["metrics"])
    return Kept(delta, int(meta["n_examples"]), float(meta["train_seconds"]), metrics)


def forget(workspace: Path, run_id: str) -> bool:
    """Erase the run's kept update; True when there was one."""
    return erase(workspace / FOLDER / f"{run_id}.tensors")
