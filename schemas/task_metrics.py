"""Evaluation metrics per task, one definition for silos, the hub, baselines and benchmarks.

binary: accuracy, ROC AUC and log loss of P(y = 1); multiclass: accuracy, macro-F1 and log loss
of the class probabilities; regression: RMSE, MAE and R². "loss" is always there too (log loss,
or mean squared error for regression) because early stopping and the strategies read it.
A metric that is undefined on the given rows (ROC AUC on one class, R² on a constant target) is
None rather than a made-up number.

ROC AUC and macro-F1 are computed here with numpy, to scikit-learn's definitions (the tests
check them against it): importing `sklearn.metrics` costs an agent about 2 s of CPU and 160 MB
at its first evaluation, for two formulas.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from numpy.typing import ArrayLike

TaskName = Literal["binary", "multiclass", "regression"]

METRICS_BY_TASK: dict[str, tuple[str, ...]] = {
    "binary": ("accuracy", "auc", "loss"),
    "multiclass": ("accuracy", "f1_macro", "loss"),
    "regression": ("rmse", "mae", "r2"),
}
_PRIMARY = {"binary": "auc", "multiclass": "f1_macro", "regression": "rmse"}
_LOWER_IS_BETTER = frozenset({"loss", "rmse", "mae"})
_EPS = 1e-15


def primary_metric(task: str) -> str:
    """The metric a comparison table leads with for `task`."""
    return _PRIMARY[task]


def higher_is_better(name: str) -> bool:
    return name not in _LOWER_IS_BETTER


def score(task: str, y_true: ArrayLike, pred: ArrayLike) -> dict[str, float | None]:
    """The task's metrics (METRICS_BY_TASK) plus "loss", for predictions on labelled rows.

    `pred` is P(y = 1) with shape (n,) for binary, class probabilities (n, k) for multiclass
    (classes 0..k-1) and predicted values (n,) for regression.
    """
    y = np.asarray(y_true)
    p = np.asarray(pred, dtype=np.float64)
    if len(y) != len(p):
        raise ValueError(f"{len(y)} labels but {len(p)} predictions")
    if len(y) == 0:
        raise ValueError("cannot score zero rows")
    if task == "binary":
        return _binary(y.astype(np.int64), p.reshape(-1))
    if task == "multiclass":
        if p.ndim != 2:
            raise ValueError(f"multiclass predictions need shape (n, k), got {p.shape}")
        return _multiclass(y.astype(np.int64), p)
    if task == "regression":
        return _regression(y.astype(np.float64), p.reshape(-1))
    raise ValueError(f"unknown task {task!r}; expected one of {sorted(METRICS_BY_TASK)}")


def _binary(y: np.ndarray, p: np.ndarray) -> dict[str, float | None]:
    clipped = np.clip(p, _EPS, 1 - _EPS)
    loss = -np.mean(y * np.log(clipped) + (1 - y) * np.log(1 - clipped))
    auc = roc_auc(y, p)
    return {"accuracy": float(np.mean((p >= 0.5) == y)), "auc": auc, "loss": float(loss)}


def roc_auc(y_true: ArrayLike, scores: ArrayLike) -> float | None:
    """ROC AUC of `scores` for two-class labels (the larger label is the positive class), or
    None when the rows hold one class. Scores are any ranking (probabilities or logits).

    The Mann-Whitney form: the chance that a positive row outranks a negative one, ties
    counting one half, which is the area under the ROC curve scikit-learn integrates."""
    y = np.asarray(y_true).reshape(-1)
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    if len(y) != len(s):
        raise ValueError(f"{len(y)} labels but {len(s)} scores")
    if not np.all(np.isfinite(s)):
        raise ValueError("scores contain NaN or infinity")
    labels = np.unique(y)
    if len(labels) != 2:
        return None
    positive = y == labels[1]
    n_pos = int(positive.sum())
    n_neg = len(y) - n_pos
    order = np.argsort(s, kind="mergesort")
    ordered = s[order]
    # 1-based ranks, tied scores sharing the mean rank of their run
    starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]])
    ends = np.r_[starts[1:], len(ordered)]
    mean_rank = (starts + 1 + ends) / 2.0
    ranks = np.empty(len(s))
    ranks[order] = np.repeat(mean_rank, ends - starts)
    u = ranks[positive].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def macro_f1(y_true: ArrayLike, predicted: ArrayLike) -> float:
    """Macro-averaged F1 over the classes present in the labels or the predictions, a class
    with no true, predicted or matched row scoring 0 (scikit-learn's zero_division=0)."""
    y = np.asarray(y_true).reshape(-1)
    pred = np.asarray(predicted).reshape(-1)
    if len(y) != len(pred):
        raise ValueError(f"{len(y)} labels but {len(pred)} predictions")
    scores = []
    for label in np.union1d(y, pred):
        is_pred, is_true = pred == label, y == label
        tp = int(np.sum(is_pred & is_true))
        fp_fn = int(np.sum(is_pred != is_true))  # false positives plus false negatives
        scores.append(2 * tp / (2 * tp + fp_fn) if tp else 0.0)
    return float(np.mean(scores))


def _multiclass(y: np.ndarray, p: np.ndarray) -> dict[str, float | None]:
    k = p.shape[1]
    if y.min() < 0 or y.max() >= k:
        raise ValueError(f"class index outside 0..{k - 1}: {int(y.min())}..{int(y.max())}")
    chosen = np.clip(p[np.arange(len(y)), y], _EPS, 1.0)
    predicted = np.argmax(p, axis=1)
    # Macro-F1 over the classes present in the labels or the predictions (sklearn's default):
    # a class that neither has nor gets a row says nothing about this silo's rows.
    f1 = macro_f1(y, predicted)
    return {
        "accuracy": float(np.mean(predicted == y)),
        "f1_macro": f1,
        "loss": float(-np.mean(np.log(chosen))),
    }


def _regression(y: np.ndarray, p: np.ndarray) -> dict[str, float | None]:
    err = p - y
    mse = float(np.mean(err**2))
    total = float(np.sum((y - y.mean()) ** 2))
    r2 = 1.0 - float(np.sum(err**2)) / total if total > 0 else None
    return {"rmse": mse**0.5, "mae": float(np.mean(np.abs(err))), "r2": r2, "loss": mse}
