"""Per-silo personalized PyTorch models: fine-tuning, FedPer heads and Ditto.

Everything here runs at the silo on its own rows and returns numbers and arrays; nothing is
sent anywhere (`silos.handlers.personalize` signs the sha256 and the metrics into the ledger).
The silo's training rows are split into fit and validation rows (stratified, seeded); every
candidate model is trained on the fit rows one epoch at a time and the epoch that scores best
on the validation rows is kept, epoch 0 (the starting model) included, so a silo whose rows do
not help keeps the model it started from. A personalized model also keeps its starting model
unless the best epoch's gain holds with `min_confidence` over bootstrap resamples of the
validation rows (`silos.personalize_gate`): on a few dozen rows the best epoch is often noise.

Three models are scored on the silo's held-out rows: the global model, the personalized one
and a local-only one (trained from the run's initial weights on the silo's rows alone, same
early stopping, the run's epoch budget), which says whether the federation helped this silo.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch

from schemas import tensors
from schemas.specs import ModelSpec, PersonalizationSpec, RunSpec, TrainingSpec, param_shapes
from schemas.task_metrics import roc_auc
from schemas.wire import Metrics
from silos.exceptions import ModelError
from silos.personalize_gate import gain_confidence, loss_gain_confidence
from silos.personalize_state import with_head
from silos.torch_model import build_model, get_params, set_params
from silos.trainer import _as_tensors, _loss_fn, _optimizer, _single_thread, evaluate


@dataclass(frozen=True)
class Split:
    """The silo's training rows cut into fit and validation rows, and its held-out rows."""

    X_fit: np.ndarray
    y_fit: np.ndarray
    X_val: np.ndarray
    y_val: np.ndarray
    X_test: np.ndarray
    y_test: np.ndarray


@dataclass(frozen=True)
class Personalized:
    """A personalized model and what it, the global and a local-only model score held out."""

    params: list[np.ndarray]
    steps: int  # epochs kept by early stopping
    best_steps: int  # the validation rows' best epoch (kept unless the gate held it back)
    confidence: float | None  # the gate's in best_steps > 0 (None: not asked)
    global_metrics: Metrics
    personalized: Metrics
    local_only: Metrics
    n_fit: int
    n_val: int


def split_rows(
    task: str, X: np.ndarray, y: np.ndarray, X_test: np.ndarray, y_test: np.ndarray,
    val_fraction: float, seed: int,
) -> Split:  # fmt: skip
    """Hold back `val_fraction` of the training rows (per class for classification, at least
    one row of each class on both sides where the class has two) for early stopping.

    Raises
    ------
    ModelError
        Fewer than two training rows (or one per class): nothing can be held back.
    """
    if len(y) < 2:
        raise ModelError(f"personalization needs at least 2 training rows, this silo has {len(y)}")
    rng = np.random.default_rng(seed)
    groups = (
        [np.arange(len(y))]
        if task == "regression"
        else [np.flatnonzero(y == c) for c in np.unique(y)]
    )
    val: list[np.ndarray] = []
    for idx in groups:
        idx = rng.permutation(idx)
        take = min(max(int(round(val_fraction * len(idx))), 1), len(idx) - 1)
        val.append(idx[:take])
    val_idx = np.sort(np.concatenate(val))
    if len(val_idx) == 0:
        raise ModelError(f"no class of this silo's {len(y)} training rows has 2 rows to hold back")
    fit = np.ones(len(y), dtype=bool)
    fit[val_idx] = False
    return Split(X[fit], y[fit], X[val_idx], y[val_idx], X_test, y_test)


class Stopped(NamedTuple):
    """What early stopping kept: the parameters after `epoch` epochs (0 = the start), the
    validation rows' best epoch, and the gate's confidence in it (None when not asked)."""

    params: list[np.ndarray]
    epoch: int
    best_epoch: int
    confidence: float | None


def early_stopped(
    spec: ModelSpec,
    start: list[np.ndarray],
    rows: Split,
    training: TrainingSpec,
    epochs: int,
    ditto_lambda: float = 0.0,
    min_confidence: float = 0.0,
) -> Stopped:
    """Train from `start` on the fit rows for up to `epochs` epochs; keep the parameters after
    the epoch (0 = `start`) that scores best on the validation rows.

    Best is the highest ROC AUC for a binary model (what the silo is judged on; a model can
    lower its loss by moving its base rate alone, which a silo with few negatives rewards), the
    lowest loss on a tie and for the other tasks.

    `ditto_lambda` > 0 adds (lambda/2)||w - start||^2 to the loss (Ditto's pull toward the
    global model, which is where a Ditto model starts), taken as its proximal step.
    `min_confidence` > 0 keeps `start` unless the best epoch beats it on at least that share of
    bootstrap resamples of the validation rows (`silos.personalize_gate`). An epoch whose
    parameters, validation outputs or loss are not finite (a learning rate too large for the
    rows) ends training: the best finite epoch so far, `start` at worst, is kept.

    Raises
    ------
    ModelError
        `start` itself gives non-finite validation outputs."""
    X, y = _as_tensors(spec, rows.X_fit, rows.y_fit)
    Xv, yv = _as_tensors(spec, rows.X_val, rows.y_val)
    loss_fn = _loss_fn(spec)
    with _single_thread():
        model = build_model(spec)
        set_params(model, start)
        anchor = [p.detach().clone() for p in model.parameters()]
        optimizer = _optimizer(model, training)
        generator = torch.Generator().manual_seed(training.seed)

        def validate() -> tuple[tuple[float, float], torch.Tensor] | None:
            """The epoch's key (lower is better) and validation outputs; None if not finite."""
            with torch.no_grad():
                out = model(Xv)
                loss = float(loss_fn(out, yv).item()) / len(yv)
                finite = all(bool(torch.isfinite(p).all()) for p in model.parameters())
            if not (finite and bool(torch.isfinite(out).all()) and np.isfinite(loss)):
                return None
            return (-_auc(spec, rows.y_val, out), loss), out

        validated = validate()
        if validated is None:
            raise ModelError("the starting model gives non-finite outputs on the validation rows")
        best, start_out = validated
        start_key = best
        best_epoch, best_params, best_out = 0, get_params(model), start_out
        # Ditto's pull as its exact proximal step after each optimizer step: w <- (w + s a) /
        # (1 + s), s = lr * lambda. The same minimiser as adding (lambda/2)||w - a||^2 to the
        # loss, but stable for every lambda (a plain gradient step on it overshoots the anchor
        # once s > 2 and diverges); a huge lambda keeps the global model, as it should.
        pull = training.lr * ditto_lambda
        keep = 1.0 / (1.0 + pull)  # in (0, 1]: no overflow however large s is
        for epoch in range(1, epochs + 1):
            for idx in torch.randperm(len(y), generator=generator).split(training.batch_size):
                optimizer.zero_grad()
                objective = loss_fn(model(X[idx]), y[idx]) / len(idx)
                objective.backward()
                optimizer.step()
                if pull > 0:
                    with torch.no_grad():
                        for p, a in zip(model.parameters(), anchor, strict=True):
                            p.mul_(keep).add_(a, alpha=1.0 - keep)
            validated = validate()
            if validated is None:  # diverged: no later epoch can be trusted either
                break
            current, out = validated
            if current < best:  # strictly better: on a tie the earlier epoch stays
                best, best_epoch, best_params, best_out = current, epoch, get_params(model), out
    if best_epoch == 0 or min_confidence <= 0:
        return Stopped(best_params, best_epoch, best_epoch, None)
    by_auc = best[0] < start_key[0]  # a higher validation ROC AUC made it best
    confidence = _confidence(spec, yv, best_out, start_out, by_auc, training.seed)
    if confidence < min_confidence:
        return Stopped(list(start), 0, best_epoch, confidence)
    return Stopped(best_params, best_epoch, best_epoch, confidence)


def personalize(
    run: RunSpec,
    global_params: list[np.ndarray],
    rows: Split,
    head: list[np.ndarray] | None = None,
    local: list[np.ndarray] | None = None,
) -> Personalized:
    """The silo's personalized model per `run.personalize`, with the three models' held-out
    metrics. `head` is the silo's own output layer (FedPer), None for the other methods;
    `local` a local-only model already trained (`local_only`), None to train it here."""
    p = run.personalize or PersonalizationSpec()
    spec = run.torch_model
    training = _training(run, p)
    start = list(global_params)
    if p.method == "fedper" and head is not None:
        start = with_head(spec, global_params, head)
    lam = p.ditto_lambda if p.method == "ditto" else 0.0
    stopped = early_stopped(
        spec, start, rows, training, p.max_epochs, ditto_lambda=lam, min_confidence=p.min_confidence
    )
    params = stopped.params
    local = local if local is not None else local_only(run, rows)
    return Personalized(
        params=params,
        steps=stopped.epoch,
        best_steps=stopped.best_epoch,
        confidence=stopped.confidence,
        global_metrics=evaluate(spec, global_params, rows.X_test, rows.y_test),
        personalized=evaluate(spec, params, rows.X_test, rows.y_test),
        local_only=evaluate(spec, local, rows.X_test, rows.y_test),
        n_fit=len(rows.y_fit),
        n_val=len(rows.y_val),
    )


def local_only(run: RunSpec, rows: Split) -> list[np.ndarray]:
    """The silo alone: the run's initial weights (seed `training.seed`) trained on its fit rows
    for the run's epoch budget (rounds x local epochs, at most 1000), early stopped alike."""
    spec = run.torch_model
    start = get_params(build_model(spec, seed=run.training.seed))
    budget = min(run.rounds * run.training.local_epochs, 1000)
    return early_stopped(spec, start, rows, run.training, budget).params


def encode_model(spec: ModelSpec, params: list[np.ndarray], metadata: dict[str, str]) -> bytes:
    """The personalized model as safetensors (the format of the run's global models)."""
    names = [name for name, _ in param_shapes(spec)]
    return tensors.encode(dict(zip(names, params, strict=True)), metadata)


def _auc(spec: ModelSpec, y: np.ndarray, logits: torch.Tensor) -> float:
    """Validation ROC AUC of a binary model; 0 (no preference) for other tasks or one class."""
    if spec.task != "binary" or len(np.unique(y)) < 2:
        return 0.0
    return roc_auc(y, logits.numpy()) or 0.0


def _confidence(
    spec: ModelSpec, labels: torch.Tensor, new: torch.Tensor, old: torch.Tensor, by_auc: bool,
    seed: int,
) -> float:  # fmt: skip
    """The gate's confidence that validation outputs `new` beat `old`: by ROC AUC when that is
    what made `new` best, else by the per-row loss (`labels` as the loss takes them)."""
    y = labels.numpy()
    if by_auc:
        return gain_confidence("auc", y, new.numpy().reshape(-1), old.numpy().reshape(-1), seed)
    new_pred, old_pred = _predictions(spec, new), _predictions(spec, old)
    return loss_gain_confidence(spec.task, y, new_pred, old_pred, seed)


def _predictions(spec: ModelSpec, out: torch.Tensor) -> np.ndarray:
    """P(y = 1), class probabilities, or the (scaled) regression output."""
    if spec.task == "binary":
        return torch.sigmoid(out).numpy().reshape(-1)
    if spec.task == "multiclass":
        return torch.softmax(out, dim=1).numpy()
    return out.numpy()


def _training(run: RunSpec, p: PersonalizationSpec) -> TrainingSpec:
    return run.training.model_copy(update={"lr": p.lr or run.training.lr})
