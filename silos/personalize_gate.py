"""Do no harm: a silo leaves the federation's model only on evidence from its own rows.

Early stopping picks the fine-tuning epoch (or the extra boosting rounds) that scores best on
the silo's validation rows. On a few dozen rows that "best" is often noise: at a hospital with
23 validation rows and 2 negatives, one re-ordered pair moves ROC AUC by 0.02, and a model that
wins on those rows loses on the next ones. So the personalized model replaces the model it
started from only when it is better with confidence: the share of bootstrap resamples of the
validation rows (drawn per class for ROC AUC, so each has both classes) on which it scores
strictly better must reach `PersonalizationSpec.min_confidence`. A tie is no evidence, and a
gain seen on too few rows keeps the starting model, which was trained on every silo's rows.
Under `MIN_GROUP_ROWS` rows of a class (or rows in all, for a loss) there is no evidence to
weigh: resamples of two negatives repeat the same two rows, so a model that happens to rank
both better wins nearly every resample (0.97-0.99 at one demo hospital, whose held-out rows
then ranked it worse). A class of the task with no validation rows at all is the extreme of
that: on positives alone a model that only raises its base rate wins every resample.

Numpy only; the resamples are seeded, so a silo makes the same choice when it runs again.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

from schemas.task_metrics import roc_auc

RESAMPLES = 400
MAX_ROWS = 20_000  # beyond this a gain is estimated well enough; bounds the gate's cost
MIN_GROUP_ROWS = 5
_EPS = 1e-15


def gain_confidence(
    by: Literal["auc", "loss"],
    y: np.ndarray,
    new: np.ndarray,
    old: np.ndarray,
    seed: int,
    classes: int = 2,
    resamples: int = RESAMPLES,
) -> float:
    """The share of bootstrap resamples of the rows on which `new` beats `old`: a higher ROC
    AUC of the scores (`by="auc"`, binary labels) or a lower mean of the per-row losses
    (`by="loss"`, `new` and `old` from `row_losses`). Rows are resampled per class of the
    task's `classes` (labels 0..classes-1; 0: no classes, the rows together; always the two for
    ROC AUC), so every resample keeps the classes' counts. 0 when they score alike everywhere,
    and when a class of the task (or the rows, without classes) has fewer than MIN_GROUP_ROWS,
    none included.

    Raises
    ------
    ValueError
        The arrays differ in length, a label is not a class of the task, or `by="auc"` on rows
        of one class.
    """
    y = np.asarray(y).reshape(-1)
    new, old = np.asarray(new, dtype=np.float64), np.asarray(old, dtype=np.float64)
    if not len(y) == len(new) == len(old):
        raise ValueError(f"{len(y)} labels, {len(new)} new and {len(old)} old scores")
    rng = np.random.default_rng(seed)
    if by == "auc" or classes:
        # every class of the task, not only those present: a class with no rows is no evidence
        groups = [np.flatnonzero(y == c) for c in range(2 if by == "auc" else classes)]
        if sum(len(g) for g in groups) != len(y):
            raise ValueError(f"labels outside the task's classes 0..{len(groups) - 1}")
        if by == "auc" and not all(len(g) for g in groups):
            raise ValueError("ROC AUC needs rows of both classes")
    else:
        groups = [np.arange(len(y))]
    if min(len(g) for g in groups) < MIN_GROUP_ROWS:
        return 0.0
    groups = _capped(groups, rng)
    wins = 0
    for _ in range(resamples):
        idx = np.concatenate([rng.choice(g, len(g)) for g in groups])
        if by == "auc":
            a, b = roc_auc(y[idx], new[idx]), roc_auc(y[idx], old[idx])
            wins += a is not None and b is not None and a > b
        else:
            wins += bool(new[idx].mean() < old[idx].mean())
    return wins / resamples


def loss_gain_confidence(
    task: str, y: np.ndarray, new_pred: np.ndarray, old_pred: np.ndarray, seed: int
) -> float:
    """`gain_confidence` by the per-row losses of two models' predictions (as `row_losses`
    takes them), resampled per class unless the task is regression (binary: 2 classes;
    multiclass: as many as `new_pred` has columns)."""
    new, old = row_losses(task, y, new_pred), row_losses(task, y, old_pred)
    classes = 0 if task == "regression" else 2
    if task == "multiclass":
        classes = np.size(new_pred) // max(len(new), 1)
    return gain_confidence("loss", y, new, old, seed, classes=classes)


def row_losses(task: str, y: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """Each row's loss: log loss of P(y = 1) (binary, `pred` shape (n,)), of the true class's
    probability (multiclass, `pred` shape (n, k)), squared error (regression)."""
    y = np.asarray(y)
    p = np.asarray(pred, dtype=np.float64)
    if task == "binary":
        p = np.clip(p.reshape(-1), _EPS, 1 - _EPS)
        return -(y * np.log(p) + (1 - y) * np.log(1 - p))
    if task == "multiclass":
        p = p.reshape(len(y), -1)
        return -np.log(np.clip(p[np.arange(len(y)), y.astype(np.int64)], _EPS, 1.0))
    return ((p.reshape(len(y), -1) - y.reshape(len(y), -1)) ** 2).sum(axis=1)


def _capped(groups: list[np.ndarray], rng: np.random.Generator) -> list[np.ndarray]:
    """At most MAX_ROWS rows, each group cut in proportion (and keeping at least one row)."""
    total = sum(len(g) for g in groups)
    if total <= MAX_ROWS:
        return groups
    return [rng.choice(g, max(1, len(g) * MAX_ROWS // total), replace=False) for g in groups]
