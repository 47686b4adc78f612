"""XGBoost's JSON model, read, checked and evaluated without the xgboost library.

The service never trusts a native model it has not parsed itself: `parse_xgb` checks every
tree (array lengths, child indices, feature indices, finite values) so that a malformed or
hostile model is refused before it is merged or loaded by `xgboost.Booster`.

The JSON layout (XGBoost >= 2, see `doc/model.schema` in the XGBoost repository)::

    {"version": [3, 2, 0],
     "learner": {
        "learner_model_param": {"base_score": "[4.25E-1]", "num_feature": "4",
                                "num_class": "0", "num_target": "1", ...},
        "objective": {"name": "binary:logistic", ...},
        "gradient_booster": {"name": "gbtree", "model": {
            "gbtree_model_param": {"num_trees": "3", "num_parallel_tree": "1"},
            "iteration_indptr": [0, 1, 2, 3], "tree_info": [0, 0, 0],
            "trees": [{"id": 0, "left_children": [...], "right_children": [...],
                       "split_indices": [...], "split_conditions": [...],
                       "default_left": [...], "base_weights": [...], ...}]}}}}

A node is a leaf when its left child is -1; a leaf's value is its ``split_conditions`` entry
(learning rate already applied). An internal node sends a row left when the feature value is
NaN and ``default_left`` is set, or when ``value < split_condition`` in float32.
``base_score`` is stored in the objective's output space (a probability for binary:logistic);
the margin every prediction starts from is its inverse link.

multi:softprob with K classes (``num_class`` K, ``objective.softmax_multiclass_param``): each
boosting round adds K trees, tree i adding to class ``tree_info[i]``; XGBoost writes them in
class order, so ``tree_info[i] == i % K`` and ``iteration_indptr`` steps by K, and `parse_xgb`
insists on that layout (merges keep it by appending whole rounds). Its ``base_score`` holds K
margins, ``[m_0,...,m_{K-1}]``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from schemas.objectives import base_score_to_margin
from schemas.tree_errors import TreeModelFormatError, UnsupportedTreeError

OBJECTIVES = ("binary:logistic", "multi:softprob", "reg:squarederror")
_TREE_ARRAYS = ("left_children", "right_children", "split_indices", "split_conditions")


@dataclass(frozen=True)
class XGBTree:
    """One tree as numpy arrays (float32 values, as XGBoost evaluates them)."""

    left: np.ndarray
    right: np.ndarray
    feature: np.ndarray
    condition: np.ndarray
    default_left: np.ndarray


@dataclass(frozen=True)
class XGBModel:
    """A parsed XGBoost model: the JSON document plus what evaluation and merging need."""

    doc: dict[str, Any]
    trees: tuple[XGBTree, ...]
    objective: str
    n_features: int
    base_scores: tuple[float, ...]  # one per class (multi:softprob), else one
    num_class: int = 0  # K for multi:softprob, else 0

    @property
    def per_round(self) -> int:
        """Trees per boosting round: K for multi:softprob, else 1."""
        return max(self.num_class, 1)

    @property
    def n_rounds(self) -> int:
        return len(self.trees) // self.per_round

    @property
    def base_score(self) -> float:
        """The one base score of a binary or regression model."""
        if len(self.base_scores) != 1:
            raise ValueError(f"a {self.num_class}-class model has one base score per class")
        return self.base_scores[0]

    @property
    def base_margin(self) -> np.ndarray:
        """The margin(s) every prediction starts from, float64 of shape (per_round,)."""
        return np.array([base_score_to_margin(b, self.objective) for b in self.base_scores])


def format_base_score(value: float | Sequence[float] | np.ndarray) -> str:
    """XGBoost 3's string form of base scores, e.g. ``[4.25E-1]`` or ``[1E-1,2E-1,3E-1]``."""
    values = np.atleast_1d(np.asarray(value, dtype=np.float32))
    return "[" + ",".join(f"{v:.8E}" for v in values) + "]"


def parse_xgb(data: bytes) -> XGBModel:
    """Parse and check an XGBoost JSON model.

    Raises
    ------
    TreeModelFormatError
        Not JSON, not an XGBoost gbtree model, or a tree whose arrays are inconsistent.
    UnsupportedTreeError
        Categorical splits, several targets, an objective other than binary:logistic,
        multi:softprob and reg:squarederror, or multi-class trees out of class order.
    """
    try:
        doc = json.loads(data)
        learner = doc["learner"]
        param = learner["learner_model_param"]
        booster = learner["gradient_booster"]
        objective = learner["objective"]["name"]
        n_features = int(param["num_feature"])
        num_class = int(param.get("num_class", "0"))
        base_scores = _parse_base_score(param["base_score"])
    except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise TreeModelFormatError(
            f"not an XGBoost JSON model ({type(exc).__name__}: {exc}); submit the bytes of "
            "Booster.save_raw('json')"
        ) from exc
    if booster.get("name") != "gbtree":
        raise UnsupportedTreeError(f"booster {booster.get('name')!r}: only gbtree is supported")
    if objective not in OBJECTIVES:
        raise UnsupportedTreeError(f"objective {objective!r}: supported are {list(OBJECTIVES)}")
    if str(param.get("num_target", "1")) != "1":
        raise UnsupportedTreeError("multi-target models are not supported")
    multi = objective == "multi:softprob"
    if multi and num_class < 2 or not multi and num_class != 0:
        raise UnsupportedTreeError(
            f"objective {objective} with num_class {num_class}: multi:softprob needs "
            "num_class >= 2, the other objectives num_class 0"
        )
    if len(base_scores) != max(num_class, 1):
        raise TreeModelFormatError(
            f"base_score holds {len(base_scores)} values; the model has {max(num_class, 1)} "
            "output(s)"
        )
    trees = _parse_trees(booster, n_features, max(num_class, 1))
    return XGBModel(doc, trees, objective, n_features, base_scores, num_class)


def _parse_base_score(raw: str) -> tuple[float, ...]:
    values = tuple(float(v) for v in str(raw).strip().strip("[]").split(","))
    if not all(math.isfinite(v) for v in values):
        raise ValueError(f"base_score {raw!r} is not finite")
    return values


def _parse_trees(booster: dict[str, Any], n_features: int, per_round: int) -> tuple[XGBTree, ...]:
    try:
        model = booster["model"]
        raw_trees = model["trees"]
        declared = int(model["gbtree_model_param"]["num_trees"])
        tree_info = model["tree_info"]
    except (KeyError, TypeError, ValueError) as exc:
        raise TreeModelFormatError(f"gradient_booster.model is malformed: {exc}") from exc
    if declared != len(raw_trees) or len(tree_info) != len(raw_trees):
        raise TreeModelFormatError(
            f"model declares {declared} trees and {len(tree_info)} tree_info entries but "
            f"holds {len(raw_trees)} trees"
        )
    expected = [i % per_round for i in range(len(raw_trees))]
    if len(raw_trees) % per_round or [_int(c) for c in tree_info] != expected:
        raise UnsupportedTreeError(
            f"tree_info {list(tree_info)[:12]}: trees must come in whole boosting rounds of "
            f"{per_round}, one per class in class order, as XGBoost writes them"
        )
    return tuple(_parse_tree(i, t, n_features) for i, t in enumerate(raw_trees))


def _int(value: Any) -> int:
    try:
        return int(value)
    except (TypeError, ValueError) as exc:
        raise TreeModelFormatError(f"tree_info entry {value!r} is not an integer") from exc


def _parse_tree(index: int, raw: dict[str, Any], n_features: int) -> XGBTree:
    try:
        n = int(raw["tree_param"]["num_nodes"])
        arrays = {k: raw[k] for k in (*_TREE_ARRAYS, "default_left", "split_type")}
        tree_features = int(raw["tree_param"]["num_feature"])
    except (KeyError, TypeError, ValueError) as exc:
        raise TreeModelFormatError(f"tree {index} is malformed: missing {exc}") from exc
    if any(len(v) != n for v in arrays.values()):
        raise TreeModelFormatError(f"tree {index}: node arrays do not all have {n} entries")
    if tree_features != n_features:
        raise TreeModelFormatError(
            f"tree {index} declares {tree_features} features; the model {n_features}"
        )
    if any(int(t) != 0 for t in arrays["split_type"]) or raw.get("categories"):
        raise UnsupportedTreeError(f"tree {index} has categorical splits; encode categories")
    try:
        tree = XGBTree(
            left=np.asarray(arrays["left_children"], dtype=np.int64),
            right=np.asarray(arrays["right_children"], dtype=np.int64),
            feature=np.asarray(arrays["split_indices"], dtype=np.int64),
            condition=np.asarray(arrays["split_conditions"], dtype=np.float32),
            default_left=np.asarray(arrays["default_left"], dtype=bool),
        )
    except (TypeError, ValueError) as exc:
        raise TreeModelFormatError(f"tree {index}: non-numeric node values ({exc})") from exc
    _check_structure(index, tree, n_features)
    return tree


def _check_structure(index: int, tree: XGBTree, n_features: int) -> None:
    """Children point forward and in range, so evaluation terminates; features exist."""
    n = len(tree.left)
    if n == 0:
        raise TreeModelFormatError(f"tree {index} has no nodes")
    nodes = np.arange(n)
    leaf = tree.left == -1
    if not np.array_equal(leaf, tree.right == -1):
        raise TreeModelFormatError(f"tree {index}: a node has exactly one child")
    internal = ~leaf
    for child in (tree.left[internal], tree.right[internal]):
        if (child <= nodes[internal]).any() or (child >= n).any():
            raise TreeModelFormatError(f"tree {index}: child index out of order or out of range")
    used = tree.feature[internal]
    if ((used < 0) | (used >= n_features)).any():
        raise TreeModelFormatError(
            f"tree {index} splits on feature {int(used.max())}; the model has {n_features}"
        )
    if not np.isfinite(tree.condition).all():
        raise TreeModelFormatError(f"tree {index} holds NaN or infinite values")


def tree_values(tree: XGBTree, X32: np.ndarray) -> np.ndarray:
    """The leaf value each row of float32 `X32` reaches in `tree`."""
    rows = np.arange(X32.shape[0])
    node = np.zeros(X32.shape[0], dtype=np.int64)
    # Children always have larger indices, so at most n steps reach every leaf.
    for _ in range(len(tree.left)):
        active = tree.left[node] != -1
        if not active.any():
            break
        x = X32[rows, tree.feature[node]]
        go_left = np.where(np.isnan(x), tree.default_left[node], x < tree.condition[node])
        step = np.where(go_left, tree.left[node], tree.right[node])
        node = np.where(active, step, node)
    return tree.condition[node].astype(np.float64)


def predict_margin_xgb(model: XGBModel, X: np.ndarray) -> np.ndarray:
    """Raw margin (base margin plus every tree's leaf value) of each row, as float64:
    shape (n,), or (n, K) for multi:softprob (tree i adds to class i % K)."""
    X32 = np.asarray(X, dtype=np.float32)
    if X32.ndim != 2 or X32.shape[1] != model.n_features:
        raise ValueError(f"X has shape {X32.shape}; the model expects (n, {model.n_features})")
    k = model.per_round
    base = model.base_margin.astype(np.float32).astype(np.float64)
    out = np.tile(base, (X32.shape[0], 1))
    for i, tree in enumerate(model.trees):
        out[:, i % k] += tree_values(tree, X32)
    return out if model.num_class else out[:, 0]


def dump_xgb(doc: dict[str, Any]) -> bytes:
    """Serialize a model document as compact JSON bytes that `xgboost.Booster` loads."""
    return json.dumps(doc, separators=(",", ":"), allow_nan=False).encode()
