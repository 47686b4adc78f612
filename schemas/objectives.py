"""Tree-model objectives per task, and the links between margins and predictions (both sides).

One objective per contract task, named as XGBoost names it (LightGBM's name alongside):

    binary      binary:logistic    lightgbm binary       one margin, P(y = 1) = sigmoid(margin)
    multiclass  multi:softprob     lightgbm multiclass   K margins (one tree per class and
                                                         boosting round), softmax over them
    regression  reg:squarederror   lightgbm regression   one margin, the prediction itself

Base scores: XGBoost stores binary:logistic's base score as a probability (margin = logit), a
squared-error one as the value itself, and multi:softprob's as K margins (XGBoost 3 writes
``[m_0,...,m_{K-1}]``; its own intercept is log of each class's frequency, centred).
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np

TreeObjective = Literal["binary:logistic", "multi:softprob", "reg:squarederror"]

OBJECTIVE_BY_TASK: dict[str, TreeObjective] = {
    "binary": "binary:logistic",
    "multiclass": "multi:softprob",
    "regression": "reg:squarederror",
}
TASK_BY_OBJECTIVE: dict[str, str] = {v: k for k, v in OBJECTIVE_BY_TASK.items()}
LGB_OBJECTIVE = {
    "binary:logistic": "binary",
    "multi:softprob": "multiclass",
    "reg:squarederror": "regression",
}
# LightGBM's first word of the model's objective line -> ours (multiclassova is not supported)
FROM_LGB = {v: k for k, v in LGB_OBJECTIVE.items()}


def objective_for(task: str) -> TreeObjective:
    """The tree objective of a contract task (ValueError naming the allowed tasks)."""
    try:
        return OBJECTIVE_BY_TASK[task]
    except KeyError:
        raise ValueError(
            f"unknown task {task!r}; expected one of {sorted(OBJECTIVE_BY_TASK)}"
        ) from None


def task_of(objective: str) -> str:
    """The contract task an objective (XGBoost or LightGBM name, first word) serves."""
    name = objective.split()[0] if objective else objective
    name = FROM_LGB.get(name, name)
    try:
        return TASK_BY_OBJECTIVE[name]
    except KeyError:
        raise ValueError(
            f"objective {objective!r} is not one of {sorted(TASK_BY_OBJECTIVE)}"
        ) from None


def base_score_to_margin(base_score: float, objective: str) -> float:
    """Inverse link of one base score: logit for binary:logistic, identity otherwise
    (squared error; multi:softprob, whose base scores are already margins)."""
    if objective == "binary:logistic":
        p = min(max(base_score, 1e-16), 1 - 1e-16)
        return math.log(p / (1 - p))
    return base_score


def margin_to_base_score(margin: float, objective: str) -> float:
    """Link of one margin: sigmoid for binary:logistic, identity otherwise."""
    if objective == "binary:logistic":
        return 1.0 / (1.0 + math.exp(-margin))
    return margin


def softmax(margins: np.ndarray) -> np.ndarray:
    """Row-wise softmax of (n, k) margins (shifted by the row maximum, so it never overflows)."""
    z = np.asarray(margins, dtype=np.float64)
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def predict_from_margin(objective: str, margin: np.ndarray, sigmoid: float = 1.0) -> np.ndarray:
    """What `score` takes: P(y = 1) (n,), class probabilities (n, k), or values (n,).

    `margin` is (n,) or, for multi:softprob, (n, k); `sigmoid` is LightGBM's binary scale.
    """
    task = task_of(objective)
    if task == "binary":
        return 1.0 / (1.0 + np.exp(-sigmoid * np.asarray(margin, dtype=np.float64)))
    if task == "multiclass":
        return softmax(margin)
    return np.asarray(margin, dtype=np.float64)


def multiclass_intercept(class_counts: np.ndarray) -> np.ndarray:
    """XGBoost's multi:softprob intercept: log class frequencies, centred to mean 0 (float64).

    A class with no row gets frequency 1e-6 rather than log 0.
    """
    counts = np.asarray(class_counts, dtype=np.float64)
    freq = np.maximum(counts / max(counts.sum(), 1.0), 1e-6)
    logs = np.log(freq)
    return logs - logs.mean()
