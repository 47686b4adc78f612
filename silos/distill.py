"""One silo's distillation step: its own kind of model, trained on its rows and, once the
federation has published soft labels, on the reference rows labelled with them.

The model and the silo's own predictions stay here; what leaves is n_k / N times the model's
P(y=1) on the reference rows, masked (`silos.handlers.distill`). The same kind of model trained
on the silo's rows alone is the baseline its held-out metrics are compared with.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from schemas.contracts import Contract
from schemas.contracts.stats import FederationStats
from schemas.distill import SOFT_LABELS, reference_seed
from schemas.exceptions import TensorFormatError
from schemas.specs import RunSpec
from schemas.task_metrics import score
from schemas.tensors import decode_expected
from schemas.wire import Metrics
from silos.distill_reference import reference_features
from silos.exceptions import ModelError
from silos.files import private_dir, write_private
from silos.local_models import LocalModel, LocalParams, train_local

STATE_DIR = "distill"


@dataclass(frozen=True)
class Distilled:
    """This round's model at the silo, its predictions on the reference rows, its metrics."""

    kind: str
    model: LocalModel
    reference_predictions: np.ndarray
    distilled: Metrics
    alone: Metrics
    n_train: int


def reference_rows(
    spec: RunSpec, run_id: str, contract: Contract, stats: list[float] | None
) -> np.ndarray:
    """The run's reference set, encoded as every silo encodes it (same seed, same statistics)."""
    assert spec.distill is not None
    federation = FederationStats.from_summed_moments(stats, contract) if stats else None
    return reference_features(
        contract, federation, spec.distill.reference_rows, reference_seed(run_id)
    )


def decode_soft_labels(payload: bytes, n_rows: int) -> np.ndarray:
    """The published soft labels (a model version of the run) as float64 in [0, 1]."""
    try:
        arrays, _ = decode_expected(payload, [(SOFT_LABELS, (n_rows,))])
    except TensorFormatError as exc:
        raise ModelError(
            f"the published soft labels do not fit {n_rows} reference rows: {exc}"
        ) from exc
    soft = np.asarray(arrays[0], dtype=np.float64)
    if not (np.isfinite(soft).all() and ((soft >= 0) & (soft <= 1)).all()):
        raise ModelError("the published soft labels are not probabilities in [0, 1]")
    return soft


def member_params(spec: RunSpec) -> LocalParams:
    """An mlp member takes the run's hidden layers (the run's `model`); the rest the defaults."""
    hidden = spec.model.hidden if spec.model is not None and spec.model.hidden else (32,)
    return LocalParams(hidden=hidden)


def distill_step(
    spec: RunSpec,
    silo: str,
    train: tuple[np.ndarray, np.ndarray],
    test: tuple[np.ndarray, np.ndarray],
    X_ref: np.ndarray,
    soft: np.ndarray | None,
) -> Distilled:
    """Train this silo's model on its rows (+ the reference rows with `soft` as targets: the
    loss is the mean over its rows plus `distill.weight` times the mean over the reference
    rows), and the same kind on its rows alone; score both on `test`.

    Raises
    ------
    ModelError
        The rows or soft labels do not fit (sizes, values), or training fails.
    """
    assert spec.distill is not None
    kind, seed, params = spec.distill.kind_for(silo), spec.training.seed, member_params(spec)
    (X, y), (X_test, y_test) = train, test
    alone = train_local(kind, X, y, seed=seed, params=params)
    model = alone
    if soft is not None and spec.distill.weight > 0:
        if len(soft) != len(X_ref):
            raise ModelError(f"{len(soft)} soft labels for {len(X_ref)} reference rows")
        # loss = mean over own rows + weight * mean over reference rows, whatever their sizes
        per_ref = spec.distill.weight * len(y) / len(soft)
        weight = np.concatenate([np.ones(len(y)), np.full(len(soft), per_ref)])
        # and as many optimizer steps as alone: more steps on a small silo's rows overfit them
        # (Switzerland, 92 rows: 0.70 -> 0.62 AUC alone at 6x the epochs)
        steps = max(1, round(params.epochs * len(y) / (len(y) + len(soft))))
        params = replace(params, epochs=steps)
        model = train_local(
            kind,
            np.concatenate([X, X_ref]).astype(np.float32),
            None,
            soft=np.concatenate([np.asarray(y, dtype=np.float64), soft]),
            seed=seed,
            params=params,
            weight=weight,
        )
    predictions = np.clip(model.predict_proba(X_ref), 0.0, 1.0)
    return Distilled(
        kind=kind,
        model=model,
        reference_predictions=predictions,
        distilled=_metrics(y_test, model.predict_proba(X_test)),
        alone=_metrics(y_test, alone.predict_proba(X_test)),
        n_train=len(y),
    )


def _metrics(y: np.ndarray, p: np.ndarray) -> Metrics:
    scores = score("binary", np.asarray(y, dtype=np.float64), p)
    loss = scores.pop("loss")
    assert loss is not None  # score always computes the loss
    return Metrics(n_test=len(y), loss=loss, **scores)


def save_model(workspace: Path, run_id: str, data: bytes) -> Path:
    """Keep this silo's distilled model in its workspace (it never leaves the silo)."""
    path = private_dir(workspace / STATE_DIR) / f"{run_id}.model"
    write_private(path, data)
    return path
