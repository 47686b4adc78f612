"""Local training and evaluation of the tabular PyTorch model on one silo's arrays.

The loss follows the model's task: binary cross-entropy on one logit (binary), cross-entropy
on softmax logits (multiclass), mean squared error (regression). A regression model learns the
target mapped into [0, 1] by the spec's `target_range`, so the default learning rates suit any
unit; `predict` maps its outputs back, and metrics are in the target's own units.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from schemas.specs import ModelSpec, TrainingSpec
from schemas.task_metrics import score
from schemas.wire import Metrics
from silos.exceptions import ModelError
from silos.optim import Optimizer, make_optimizer
from silos.rows import checked_rows
from silos.torch_model import build_model, get_params, set_params


@dataclass
class TrainResult:
    """What one round of local training produced.

    `loss` is the mean training loss (cross-entropy, or MSE of the scaled regression target)
    over the last local epoch, without the proximal term, so it is comparable across
    strategies.
    """

    params: list[np.ndarray]
    n_examples: int
    loss: float
    seconds: float
    steps: int = 0  # optimizer steps taken (SCAFFOLD's K)


@contextmanager
def _single_thread() -> Iterator[None]:
    """Run with one intra-op thread: small tabular batches are slower with more, and several
    silos may share a machine. The previous setting is restored afterwards."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def train_local(
    spec: ModelSpec,
    global_params: list[np.ndarray],
    X: np.ndarray,
    y: np.ndarray,
    training: TrainingSpec,
    mu: float = 0.0,
    correction: list[np.ndarray] | None = None,
) -> TrainResult:
    """Train from the global parameters on local rows.

    Parameters
    ----------
    spec
        The model architecture.
    global_params
        Starting parameters, in `param_shapes(spec)` order.
    X, y
        float features of shape (n, spec.n_features) and labels of shape (n,): 0/1 (binary),
        class indices (multiclass) or target values (regression), as `silos.data` makes them.
    training
        Epochs, batch size, optimizer, learning rate, weight decay and the shuffling seed.
        The same seed, data and start give the same result.
    mu
        FedProx weight: adds (mu/2) * ||w - w_global||^2 to the loss when positive.
    correction
        SCAFFOLD's (c - c_i), in `param_shapes(spec)` order: added to every step's gradient.

    Raises
    ------
    ModelError
        The arrays do not match the spec or each other, or there are no rows.
    """
    features, labels = _as_tensors(spec, X, y)
    started = time.perf_counter()
    with _single_thread():
        model = build_model(spec)
        set_params(model, global_params)
        fix = None if correction is None else [torch.from_numpy(c) for c in correction]
        loss, steps = _fit(spec, model, features, labels, training, mu, fix)
    seconds = time.perf_counter() - started
    return TrainResult(get_params(model), len(labels), loss, seconds, steps)


def _fit(
    spec: ModelSpec,
    model: nn.Module,
    features: torch.Tensor,
    labels: torch.Tensor,
    training: TrainingSpec,
    mu: float,
    correction: list[torch.Tensor] | None = None,
) -> tuple[float, int]:
    """Mini-batch training in place; returns the last epoch's mean loss and the step count."""
    anchor = [p.detach().clone() for p in model.parameters()]
    optimizer = _optimizer(model, training)
    generator = torch.Generator().manual_seed(training.seed)
    loss_fn = _loss_fn(spec)
    n = features.shape[0]
    epoch_loss = float("nan")
    steps = 0
    for _ in range(training.local_epochs):
        total = 0.0
        for idx in torch.randperm(n, generator=generator).split(training.batch_size):
            optimizer.zero_grad()
            batch_loss = loss_fn(model(features[idx]), labels[idx])
            objective = batch_loss / len(idx)
            if mu > 0:
                drift = sum(
                    ((p - a) ** 2).sum() for p, a in zip(model.parameters(), anchor, strict=True)
                )
                objective = objective + 0.5 * mu * drift
            objective.backward()
            if correction is not None:
                for p, c in zip(model.parameters(), correction, strict=True):
                    p.grad.add_(c)  # type: ignore[union-attr]
            optimizer.step()
            steps += 1
            total += batch_loss.item()
        epoch_loss = total / n
    return epoch_loss, steps


def evaluate(spec: ModelSpec, params: list[np.ndarray], X: np.ndarray, y: np.ndarray) -> Metrics:
    """The task's metrics (`schemas.task_metrics.score`) of a model on held-out rows.

    binary: loss, accuracy at threshold 0.5 and ROC AUC (None on one class); multiclass: loss,
    accuracy and macro-F1; regression: loss (MSE), RMSE, MAE and R², in the target's units.

    Raises
    ------
    ModelError
        The arrays do not match the spec or each other, or there are no rows.
    """
    _as_tensors(spec, X, y)  # checks shapes and labels before any work
    truth = np.asarray(y, dtype=np.float64)
    scores = score(spec.task, truth, predict(spec, params, X))
    loss = scores.pop("loss")
    assert loss is not None  # score always computes the loss
    return Metrics(n_test=len(truth), loss=loss, **scores)


def predict(spec: ModelSpec, params: list[np.ndarray], X: np.ndarray) -> np.ndarray:
    """P(y = 1) (binary, shape (n,)), class probabilities (multiclass, (n, k)) or predicted
    values in the target's units (regression, (n,))."""
    features, _ = _as_tensors(spec, X, np.zeros(len(X), dtype=np.float32))
    with _single_thread(), torch.no_grad():
        model = build_model(spec)
        set_params(model, params)
        out = model(features)
    if spec.task == "binary":
        return torch.sigmoid(out).numpy().astype(np.float64)
    if spec.task == "multiclass":
        return torch.softmax(out, dim=1).numpy().astype(np.float64)
    low, high = spec.target_range or (0.0, 1.0)
    return out.numpy().astype(np.float64) * (high - low) + low


def _loss_fn(spec: ModelSpec) -> nn.Module:
    if spec.task == "multiclass":
        return nn.CrossEntropyLoss(reduction="sum")
    if spec.task == "regression":
        return nn.MSELoss(reduction="sum")
    return nn.BCEWithLogitsLoss(reduction="sum")


def _optimizer(model: nn.Module, training: TrainingSpec) -> Optimizer:
    """torch.optim's SGD or Adam, as `silos.optim` (which does not import torch._dynamo)."""
    return make_optimizer(
        model.parameters(), training.optimizer, training.lr, training.weight_decay
    )


def _as_tensors(spec: ModelSpec, X: np.ndarray, y: np.ndarray) -> tuple[torch.Tensor, ...]:
    """Features and the labels the loss takes: float 0/1, long class indices, or the
    regression target scaled into [0, 1] by `spec.target_range`."""
    X, y = checked_rows(X, y, spec.n_features, binary=spec.task == "binary")
    if not np.isfinite(X).all():
        raise ModelError("features contain NaN or infinity; encode rows with the FeaturePipeline")
    if spec.task == "multiclass":
        if not (np.isin(y, np.arange(spec.n_outputs))).all():
            raise ModelError(
                f"labels must be class indices 0..{spec.n_outputs - 1} for a {spec.n_outputs}-"
                "class model; derive them with silos.data.target_labels"
            )
        return torch.from_numpy(X), torch.from_numpy(y.astype(np.int64))
    if spec.task == "regression" and spec.target_range is not None:
        low, high = spec.target_range
        y = ((y.astype(np.float64) - low) / (high - low)).astype(np.float32)
    return torch.from_numpy(X), torch.from_numpy(y)
