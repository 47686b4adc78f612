"""One entry point per operation for both libraries: parse, evaluate, merge, hand off.

The service evaluates global models with `predict_margin` / `predict_proba` / `evaluate`,
numpy walks over the parsed trees; it needs neither xgboost nor lightgbm. Tests check that
the libraries' own predictions equal these.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from aggregation.trees.lgb_merge import append_lgb, merge_bagging_lgb
from aggregation.trees.lgb_model import LGBModel, parse_lgb, predict_margin_lgb, sigmoid_scale
from aggregation.trees.xgb_merge import append_xgb, merge_bagging_xgb
from aggregation.trees.xgb_model import XGBModel, parse_xgb, predict_margin_xgb
from schemas.objectives import predict_from_margin, task_of
from schemas.task_metrics import score
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


def task(parsed: ParsedModel) -> str:
    """The task the model's objective serves: binary, multiclass or regression."""
    return task_of(parsed.objective)


def is_binary(parsed: ParsedModel) -> bool:
    """Whether the model's objective is binary classification."""
    return task(parsed) == "binary"


def predict(kind: TreeKind, model: bytes | ParsedModel, X: np.ndarray) -> np.ndarray:
    """The library's `predict`: P(y = 1) (n,), class probabilities (n, K), or values (n,)."""
    parsed = parse_model(kind, model) if isinstance(model, bytes) else model
    scale = sigmoid_scale(parsed.objective) if isinstance(parsed, LGBModel) else 1.0
    return predict_from_margin(parsed.objective, predict_margin(kind, parsed, X), scale)


def predict_proba(kind: TreeKind, model: bytes | ParsedModel, X: np.ndarray) -> np.ndarray:
    """Class probabilities: P(y = 1) (n,) for binary, (n, K) for multiclass."""
    parsed = parse_model(kind, model) if isinstance(model, bytes) else model
    if task(parsed) == "regression":
        raise ValueError(f"objective {parsed.objective!r} is regression, not classification")
    return predict(kind, parsed, X)


def evaluate(kind: TreeKind, model: bytes, X: np.ndarray, y: np.ndarray) -> Metrics:
    """The metrics of the model's task (`schemas.task_metrics.score`) on labelled rows."""
    parsed = parse_model(kind, model)
    metrics = score(task(parsed), y, predict(kind, parsed, X))
    return Metrics(n_test=len(y), **metrics)  # type: ignore[arg-type]


def n_trees(kind: TreeKind, model: bytes) -> int:
    """Number of trees in a native model (K per boosting round for multiclass)."""
    return len(parse_model(kind, model).trees)


def n_rounds(kind: TreeKind, model: bytes | ParsedModel) -> int:
    """Number of boosting rounds in a native model."""
    parsed = parse_model(kind, model) if isinstance(model, bytes) else model
    return parsed.n_rounds


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
