"""LightGBM's text model, read, checked, evaluated and written without the lightgbm library.

Layout (what `Booster.model_to_string()` writes, `GBDT::SaveModelToString` in LightGBM)::

    tree                                  <- submodel name
    version=v4
    num_class=1
    num_tree_per_iteration=1
    label_index=0
    max_feature_idx=3                     <- n_features - 1
    objective=binary sigmoid:1
    feature_names=f0 f1 f2 f3
    feature_infos=[-2.9:2.2] none ...     <- per-feature value range seen in training
    tree_sizes=556 562                    <- byte length of each "Tree=i" block, used to seek

    Tree=0
    num_leaves=4
    num_cat=0
    split_feature=0 0 3                   <- internal nodes (num_leaves - 1 of them)
    threshold=0.226 -1.007 0.932
    decision_type=2 2 2                   <- bit 0 categorical, bit 1 default left,
    left_child=1 -1 -3                       bits 2-3 missing type (0 none, 1 zero, 2 NaN)
    right_child=-2 2 -4                   <- child < 0 is leaf ~child
    leaf_value=-0.44 0.42 0.028 -0.31     <- leaf outputs, learning rate already applied
    internal_value=...  is_linear=0  shrinkage=1  (and gains, weights, counts)

    end of trees

    feature_importances: ...  parameters: ... end of parameters  pandas_categorical:null

Numerical decision (`Tree::NumericalDecision`): a NaN becomes 0 unless the missing type is
NaN; a missing value (zero within 1e-35 for type "zero", NaN for type "NaN") follows the
default direction; otherwise the row goes left when ``value <= threshold`` (doubles).

Multiclass (``objective=multiclass num_class:K``, ``num_tree_per_iteration=K``): each boosting
round adds K trees, tree i adding to class i % K; a model must hold whole rounds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from schemas.tree_errors import TreeModelFormatError, UnsupportedTreeError

K_ZERO_THRESHOLD = 1e-35
_NODE_KEYS = ("split_feature", "threshold", "decision_type", "left_child", "right_child")

Block = list[tuple[str, str | None]]  # ordered "key=value" lines; None for a bare flag line


@dataclass(frozen=True)
class LGBTree:
    """One tree: its text lines (for rewriting) and numeric arrays (for evaluation)."""

    lines: Block
    feature: np.ndarray
    threshold: np.ndarray
    decision: np.ndarray
    left: np.ndarray
    right: np.ndarray
    leaf_value: np.ndarray


@dataclass(frozen=True)
class LGBModel:
    """A parsed LightGBM model: header lines, trees, and the text after the trees."""

    header: Block
    trees: tuple[LGBTree, ...]
    trailer: str
    objective: str
    n_features: int
    num_class: int = 0  # K for multiclass, else 0

    @property
    def per_round(self) -> int:
        """Trees per boosting round: K for multiclass, else 1."""
        return max(self.num_class, 1)

    @property
    def n_rounds(self) -> int:
        return len(self.trees) // self.per_round

    def header_value(self, key: str) -> str | None:
        return next((v for k, v in self.header if k == key), None)


def parse_lgb(data: bytes) -> LGBModel:
    """Parse and check a LightGBM text model.

    Raises
    ------
    TreeModelFormatError
        Not UTF-8 text, not a LightGBM tree model, or a tree whose arrays are inconsistent.
    UnsupportedTreeError
        An objective other than binary, multiclass and regression, categorical splits,
        linear trees, or a multiclass model that does not hold whole boosting rounds.
    """
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise TreeModelFormatError(f"LightGBM model is not UTF-8 text: {exc}") from exc
    lines = text.split("\n")
    if not lines or lines[0].strip() != "tree":
        raise TreeModelFormatError("not a LightGBM text model (first line is not 'tree')")
    header, pos = _read_block(lines, 1, stop=lambda line: line.startswith("Tree="))
    keys = dict(header)
    try:
        n_features = int(keys["max_feature_idx"] or "") + 1
        objective = str(keys["objective"])
        per_iteration = int(keys.get("num_tree_per_iteration") or keys["num_class"] or "")
    except (KeyError, ValueError) as exc:
        raise TreeModelFormatError(f"LightGBM header lacks or garbles {exc}") from exc
    for key in ("feature_names", "feature_infos"):
        if len((keys.get(key) or "").split()) != n_features:
            raise TreeModelFormatError(f"LightGBM header {key} does not list {n_features} entries")
    kind = objective.split()[0] if objective else ""
    if kind not in ("binary", "multiclass", "regression"):
        raise UnsupportedTreeError(
            f"objective {objective!r}: supported are binary, multiclass, regression"
        )
    if (kind == "multiclass") != (per_iteration > 1) or per_iteration < 1:
        raise UnsupportedTreeError(
            f"objective {objective!r} with {per_iteration} trees per iteration: only multiclass "
            "grows several (one per class)"
        )
    trees: list[LGBTree] = []
    while pos < len(lines) and lines[pos].startswith("Tree="):
        block, pos = _read_block(lines, pos + 1, stop=lambda line: line == "")
        trees.append(_parse_tree(len(trees), block, n_features))
        while pos < len(lines) and lines[pos] == "":
            pos += 1
    if pos >= len(lines) or lines[pos] != "end of trees":
        raise TreeModelFormatError("LightGBM model has no 'end of trees' line after its trees")
    if len(trees) % per_iteration:
        raise UnsupportedTreeError(
            f"{len(trees)} trees is not a whole number of boosting rounds of {per_iteration}"
        )
    num_class = per_iteration if kind == "multiclass" else 0
    trailer = "\n".join(lines[pos:])
    return LGBModel(header, tuple(trees), trailer, objective, n_features, num_class)


def _read_block(lines: list[str], pos: int, stop) -> tuple[Block, int]:
    block: Block = []
    while pos < len(lines) and not stop(lines[pos]):
        line = lines[pos]
        if line:
            key, sep, value = line.partition("=")
            block.append((key, value if sep else None))
        pos += 1
    return block, pos


def _numbers(index: int, fields: dict, key: str, dtype: type) -> np.ndarray:
    raw = fields.get(key)
    if raw is None:
        raise TreeModelFormatError(f"tree {index} lacks {key}")
    try:
        return np.array(raw.split(), dtype=dtype) if raw.strip() else np.array([], dtype=dtype)
    except ValueError as exc:
        raise TreeModelFormatError(f"tree {index}: {key} is not numeric ({exc})") from exc


def _parse_tree(index: int, block: Block, n_features: int) -> LGBTree:
    fields = dict(block)
    try:
        n_leaves = int(fields.get("num_leaves") or "")
    except ValueError as exc:
        raise TreeModelFormatError(f"tree {index}: num_leaves missing or not a number") from exc
    if fields.get("num_cat", "0") != "0":
        raise UnsupportedTreeError(f"tree {index} has categorical splits; encode categories")
    if fields.get("is_linear", "0") != "0":
        raise UnsupportedTreeError(f"tree {index} is a linear tree; set linear_tree=false")
    arrays = {
        key: _numbers(index, fields, key, float if key == "threshold" else np.int64)
        for key in _NODE_KEYS
    }
    leaf = _numbers(index, fields, "leaf_value", float)
    if n_leaves < 1 or len(leaf) != n_leaves:
        raise TreeModelFormatError(f"tree {index}: {len(leaf)} leaf values for {n_leaves} leaves")
    if any(len(a) != n_leaves - 1 for a in arrays.values()):
        raise TreeModelFormatError(f"tree {index}: node arrays do not have {n_leaves - 1} entries")
    tree = LGBTree(
        lines=block,
        feature=arrays["split_feature"],
        threshold=arrays["threshold"],
        decision=arrays["decision_type"],
        left=arrays["left_child"],
        right=arrays["right_child"],
        leaf_value=leaf,
    )
    _check_structure(index, tree, n_features)
    return tree


def _check_structure(index: int, tree: LGBTree, n_features: int) -> None:
    """Internal children point forward, leaves exist, features exist, values are finite."""
    n_internal = len(tree.left)
    nodes = np.arange(n_internal)
    for child in (tree.left, tree.right):
        inner = child >= 0
        if (child[inner] <= nodes[inner]).any() or (child[inner] >= n_internal).any():
            raise TreeModelFormatError(f"tree {index}: child index out of order or out of range")
        if ((~child[~inner]) >= len(tree.leaf_value)).any():
            raise TreeModelFormatError(f"tree {index}: a child points past the last leaf")
    if ((tree.feature < 0) | (tree.feature >= n_features)).any():
        raise TreeModelFormatError(
            f"tree {index} splits on feature {int(tree.feature.max())}; the model has {n_features}"
        )
    if (tree.decision & 1).any():
        raise UnsupportedTreeError(f"tree {index} has categorical splits; encode categories")
    if not (np.isfinite(tree.threshold).all() and np.isfinite(tree.leaf_value).all()):
        raise TreeModelFormatError(f"tree {index} holds NaN or infinite values")


def tree_values(tree: LGBTree, X: np.ndarray) -> np.ndarray:
    """The leaf value each row of float64 `X` reaches in `tree`."""
    if len(tree.left) == 0:
        return np.full(X.shape[0], tree.leaf_value[0])
    rows = np.arange(X.shape[0])
    node = np.zeros(X.shape[0], dtype=np.int64)
    for _ in range(len(tree.left)):
        active = node >= 0
        if not active.any():
            break
        at = np.where(active, node, 0)
        x = X[rows, tree.feature[at]]
        missing_type = (tree.decision[at] >> 2) & 3
        x = np.where(np.isnan(x) & (missing_type != 2), 0.0, x)
        is_zero = (x > -K_ZERO_THRESHOLD) & (x <= K_ZERO_THRESHOLD)
        missing = ((missing_type == 1) & is_zero) | ((missing_type == 2) & np.isnan(x))
        default_left = (tree.decision[at] & 2) > 0
        go_left = np.where(missing, default_left, x <= tree.threshold[at])
        step = np.where(go_left, tree.left[at], tree.right[at])
        node = np.where(active, step, node)
    return tree.leaf_value[~node]


def predict_margin_lgb(model: LGBModel, X: np.ndarray) -> np.ndarray:
    """Raw score (sum of every tree's leaf value) of each row, as float64: shape (n,), or
    (n, K) for multiclass (tree i adds to class i % K)."""
    X64 = np.asarray(X, dtype=np.float64)
    if X64.ndim != 2 or X64.shape[1] != model.n_features:
        raise ValueError(f"X has shape {X64.shape}; the model expects (n, {model.n_features})")
    k = model.per_round
    out = np.zeros((X64.shape[0], k))
    for i, tree in enumerate(model.trees):
        out[:, i % k] += tree_values(tree, X64)
    return out if model.num_class else out[:, 0]


def sigmoid_scale(objective: str) -> float:
    """The ``sigmoid:`` coefficient of a binary objective string (1 when absent)."""
    for part in objective.split()[1:]:
        if part.startswith("sigmoid:"):
            value = float(part.split(":", 1)[1])
            if math.isfinite(value) and value > 0:
                return value
    return 1.0


def format_number(value: float) -> str:
    """Shortest text that reads back as the same double (what LightGBM's parser expects)."""
    return repr(float(value))


def dump_lgb(header: Block, trees: list[Block], trailer: str) -> bytes:
    """Write a LightGBM text model with `tree_sizes` recomputed for the given trees."""
    tree_texts = []
    for i, lines in enumerate(trees):
        body = "".join(f"{k}={v}\n" if v is not None else f"{k}\n" for k, v in lines)
        # LightGBM ends each tree with a blank line and then one more newline.
        tree_texts.append(f"Tree={i}\n{body}\n\n")
    sizes = " ".join(str(len(t.encode())) for t in tree_texts)
    head = [("tree_sizes", sizes) if k == "tree_sizes" else (k, v) for k, v in header]
    if not any(k == "tree_sizes" for k, _ in head):
        head.append(("tree_sizes", sizes))
    head_text = "".join(f"{k}={v}\n" if v is not None else f"{k}\n" for k, v in head)
    return ("tree\n" + head_text + "\n" + "".join(tree_texts) + trailer).encode()
