"""One entry point per operation for both libraries: parse, evaluate, merge, hand off.

The service evaluates global models with `predict_margin` / `predict_proba` / `evaluate`,
numpy walks over the parsed trees; it needs neither xgboost nor lightgbm. Tests check that
the libraries' own predictions equal these.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from sklearn.metrics import roc_auc_score

from aggregation.trees.lgb_merge import append_lgb, merge_bagging_lgb
from aggregation.trees.lgb_model import LGBModel, parse_lgb, predict_margin_lgb, sigmoid_scale
from aggregation.trees.xgb_merge import append_xgb, merge_bagging_xgb
from aggregation.trees.xgb_model import XGBModel, parse_xgb, predict_margin_xgb
from schemas.tree_params import TreeKind
from schemas.wire import Metrics

ParsedModel = XGBModel | LGBModel


def parse_model(kind: TreeKind, data: bytes) -> ParsedModel:
    """Parse and structurally check a native model of `kind` (see `xgb_model`, `lgb_model`)."""
    return parse_xgb(data) if kind == "xgboost" else parse_lgb(data)


def predict_margin(kind: TreeKind, model: bytes | ParsedModel, X: np.ndarray) -> np.ndarray:
    """Raw margin of every row: what ``output_margin=True`` / ``raw_score=True`` return."""
    parsed = parse_model(kind, model) if isinstance(model, bytes) else model
    if isinstance(parsed, XGBModel):
        return predict_margin_xgb(parsed, X)
    return predict_margin_lgb(parsed, X)


def is_binary(parsed: ParsedModel) -> bool:
    """Whether the model's objective is binary classification (else squared-error regression)."""
    return parsed.objective.split()[0] in ("binary:logistic", "binary")


def predict_proba(kind: TreeKind, model: bytes | ParsedModel, X: np.ndarray) -> np.ndarray:
    """Probability of the positive class for a binary model (the library's `predict`)."""
    parsed = parse_model(kind, model) if isinstance(model, bytes) else model
    if not is_binary(parsed):
        raise ValueError(f"objective {parsed.objective!r} is not binary classification")
    scale = sigmoid_scale(parsed.objective) if isinstance(parsed, LGBModel) else 1.0
    return 1.0 / (1.0 + np.exp(-scale * predict_margin(kind, parsed, X)))


def evaluate(kind: TreeKind, model: bytes, X: np.ndarray, y: np.ndarray) -> Metrics:
    """Log loss, accuracy at 0.5 and ROC AUC (None for a one-class `y`) of a binary model."""
    probs = np.clip(predict_proba(kind, model, X), 1e-15, 1 - 1e-15)
    truth = np.asarray(y, dtype=np.float64)
    loss = float(-np.mean(truth * np.log(probs) + (1 - truth) * np.log(1 - probs)))
    accuracy = float(np.mean((probs >= 0.5) == (truth == 1)))
    auc = float(roc_auc_score(truth, probs)) if len(np.unique(truth)) == 2 else None
    return Metrics(n_test=len(truth), loss=loss, accuracy=accuracy, auc=auc)


def n_trees(kind: TreeKind, model: bytes) -> int:
    """Number of trees in a native model."""
    return len(parse_model(kind, model).trees)


def merge_bagging(
    kind: TreeKind, base: bytes | None, updates: Mapping[str, tuple[bytes, int]]
) -> bytes:
    """Bagging: next global model from the current one and every silo's (new trees, rows)."""
    if kind == "xgboost":
        return merge_bagging_xgb(base, updates)
    return merge_bagging_lgb(base, updates)


def append_cyclic(kind: TreeKind, base: bytes | None, update: bytes, silo: str) -> bytes:
    """Cyclic: the model passed to the next silo, the current one plus `silo`'s new trees."""
    if kind == "xgboost":
        return append_xgb(base, update, silo)
    return append_lgb(base, update, silo)
