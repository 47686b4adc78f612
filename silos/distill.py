"""One silo's distillation step: its own kind of model, trained on its rows and, once the
federation has published soft labels, on the reference rows labelled with them, weighted as
the silo chooses on its own validation rows (`choose_weight`).

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
from silos.personalize import split_rows
from silos.personalize_gate import loss_gain_confidence

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
    weight: float | None = None  # of the reference rows, chosen by the silo (None: no soft labels)
    validation: tuple[tuple[float, float], ...] = ()  # (candidate weight, validation log-loss)
    confidence: float | None = None  # the gate's in the lowest-loss weight (None: not asked)


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
    """Train this silo's model on its rows (+ the reference rows with `soft` as targets, at the
    weight the silo chooses from `distill.weights`, `choose_weight`), and the same kind on its
    rows alone; score both on `test`.

    Raises
    ------
    ModelError
        The rows or soft labels do not fit (sizes, values), or training fails.
    """
    assert spec.distill is not None
    kind, seed, params = spec.distill.kind_for(silo), spec.training.seed, member_params(spec)
    (X, y), (X_test, y_test) = train, test
    alone = train_local(kind, X, y, seed=seed, params=params)
    model, weight = alone, None
    validation: tuple[tuple[float, float], ...] = ()
    confidence = None
    if soft is not None:
        if len(soft) != len(X_ref):
            raise ModelError(f"{len(soft)} soft labels for {len(X_ref)} reference rows")
        weight, validation, confidence = choose_weight(spec, silo, train, X_ref, soft)
        if weight > 0:  # 0: the model trained alone, exactly
            model = fit_with_reference(spec, silo, train, X_ref, soft, weight)
    predictions = np.clip(model.predict_proba(X_ref), 0.0, 1.0)
    return Distilled(
        kind=kind,
        model=model,
        reference_predictions=predictions,
        distilled=_metrics(y_test, model.predict_proba(X_test)),
        alone=_metrics(y_test, alone.predict_proba(X_test)),
        n_train=len(y),
        weight=weight,
        validation=validation,
        confidence=confidence,
    )


def fit_with_reference(
    spec: RunSpec,
    silo: str,
    rows: tuple[np.ndarray, np.ndarray],
    X_ref: np.ndarray,
    soft: np.ndarray,
    weight: float,
) -> LocalModel:
    """This silo's kind trained on `rows` plus the reference rows labelled `soft`: its loss is
    the mean over its rows plus `weight` times the mean over the reference rows (0: its rows
    alone)."""
    assert spec.distill is not None
    kind, seed, params = spec.distill.kind_for(silo), spec.training.seed, member_params(spec)
    X, y = rows
    if weight == 0:
        return train_local(kind, X, y, seed=seed, params=params)
    # loss = mean over own rows + weight * mean over reference rows, whatever their sizes
    per_ref = weight * len(y) / len(soft)
    row_weight = np.concatenate([np.ones(len(y)), np.full(len(soft), per_ref)])
    # and as many optimizer steps as alone: more steps on a small silo's rows overfit them
    # (Switzerland, 92 rows: 0.70 -> 0.62 AUC alone at 6x the epochs)
    steps = max(1, round(params.epochs * len(y) / (len(y) + len(soft))))
    return train_local(
        kind,
        np.concatenate([X, X_ref]).astype(np.float32),
        None,
        soft=np.concatenate([np.asarray(y, dtype=np.float64), soft]),
        seed=seed,
        params=replace(params, epochs=steps),
        weight=row_weight,
    )


def choose_weight(
    spec: RunSpec,
    silo: str,
    train: tuple[np.ndarray, np.ndarray],
    X_ref: np.ndarray,
    soft: np.ndarray,
) -> tuple[float, tuple[tuple[float, float], ...], float | None]:
    """The weight of the reference rows this silo trains with, each candidate's validation
    log-loss, and the gate's confidence (None when not asked): every weight of
    `distill.weights` trained on the fit part of the silo's training rows
    (`silos.personalize.split_rows`, stratified, seeded by the run's seed) and scored on the
    held-back part; the lowest loss wins, the smaller weight on a tie. Weight 0 (the model
    trained alone) stays unless the winner's per-row losses beat its on `min_confidence` of
    bootstrap resamples of the held-back rows (`silos.personalize_gate`). A one-weight grid is
    that weight, unvalidated."""
    assert spec.distill is not None
    grid = spec.distill.weights  # ascending (DistillSpec sorts it)
    if len(grid) == 1:
        return grid[0], (), None
    X, y = train
    rows = split_rows("binary", X, y, X[:0], y[:0], spec.distill.val_fraction, spec.training.seed)
    losses, predicted = [], {}
    for w in grid:
        model = fit_with_reference(spec, silo, (rows.X_fit, rows.y_fit), X_ref, soft, w)
        predicted[w] = model.predict_proba(rows.X_val)
        losses.append((w, _metrics(rows.y_val, predicted[w]).loss))
    best = min(losses, key=lambda wl: wl[1])[0]  # min keeps the first (smaller) weight on a tie
    gate, confidence = spec.distill.min_confidence, None
    if best > 0 and grid[0] == 0 and gate > 0:
        y, seed = rows.y_val, spec.training.seed
        confidence = loss_gain_confidence("binary", y, predicted[best], predicted[0.0], seed)
        if confidence < gate:
            best = 0.0
    return best, tuple(losses), confidence


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
