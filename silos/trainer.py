"""Local training and evaluation of the tabular PyTorch model on one silo's arrays."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
from sklearn.metrics import roc_auc_score
from torch import nn

from schemas.specs import ModelSpec, TrainingSpec
from schemas.wire import Metrics
from silos.exceptions import ModelError
from silos.rows import checked_rows
from silos.torch_model import build_model, get_params, set_params


@dataclass
class TrainResult:
    """What one round of local training produced.

    `loss` is the mean binary cross-entropy over the last local epoch, without the proximal
    term, so it is comparable across strategies.
    """

    params: list[np.ndarray]
    n_examples: int
    loss: float
    seconds: float


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
) -> TrainResult:
    """Train from the global parameters on local rows.

    Parameters
    ----------
    spec
        The model architecture.
    global_params
        Starting parameters, in `param_shapes(spec)` order.
    X, y
        float features of shape (n, spec.n_features) and 0/1 labels of shape (n,).
    training
        Epochs, batch size, optimizer, learning rate, weight decay and the shuffling seed.
        The same seed, data and start give the same result.
    mu
        FedProx weight: adds (mu/2) * ||w - w_global||^2 to the loss when positive.

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
        loss = _fit(model, features, labels, training, mu)
    return TrainResult(get_params(model), len(labels), loss, time.perf_counter() - started)


def _fit(
    model: nn.Module,
    features: torch.Tensor,
    labels: torch.Tensor,
    training: TrainingSpec,
    mu: float,
) -> float:
    """Mini-batch training in place; returns the last epoch's mean BCE."""
    anchor = [p.detach().clone() for p in model.parameters()]
    optimizer = _optimizer(model, training)
    generator = torch.Generator().manual_seed(training.seed)
    loss_fn = nn.BCEWithLogitsLoss(reduction="sum")
    n = features.shape[0]
    epoch_loss = float("nan")
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
            optimizer.step()
            total += batch_loss.item()
        epoch_loss = total / n
    return epoch_loss


def evaluate(spec: ModelSpec, params: list[np.ndarray], X: np.ndarray, y: np.ndarray) -> Metrics:
    """Loss, accuracy at threshold 0.5 and ROC AUC of a model on held-out rows.

    AUC is None when `y` holds only one class, where it is undefined.

    Raises
    ------
    ModelError
        The arrays do not match the spec or each other, or there are no rows.
    """
    features, labels = _as_tensors(spec, X, y)
    with _single_thread(), torch.no_grad():
        model = build_model(spec)
        set_params(model, params)
        logits = model(features)
        loss = float(nn.functional.binary_cross_entropy_with_logits(logits, labels))
        probs = torch.sigmoid(logits).numpy()
    truth = labels.numpy()
    accuracy = float(np.mean((probs >= 0.5) == (truth == 1)))
    auc = float(roc_auc_score(truth, probs)) if len(np.unique(truth)) == 2 else None
    return Metrics(n_test=len(truth), loss=loss, accuracy=accuracy, auc=auc)


def _optimizer(model: nn.Module, training: TrainingSpec) -> torch.optim.Optimizer:
    if training.optimizer == "adam":
        return torch.optim.Adam(
            model.parameters(), lr=training.lr, weight_decay=training.weight_decay
        )
    return torch.optim.SGD(model.parameters(), lr=training.lr, weight_decay=training.weight_decay)


def _as_tensors(spec: ModelSpec, X: np.ndarray, y: np.ndarray) -> tuple[torch.Tensor, ...]:
    X, y = checked_rows(X, y, spec.n_features)
    if not np.isfinite(X).all():
        raise ModelError("features contain NaN or infinity; encode rows with the FeaturePipeline")
    return torch.from_numpy(X), torch.from_numpy(y)
