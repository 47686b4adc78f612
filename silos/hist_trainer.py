"""A silo's side of secure-histogram boosting: gradients, per-level histograms, row routing.

Lifecycle (all numbers that leave the silo go through secure aggregation, masked):

    state = HistSilo.create("bank-a", X, y, config, min_rows_policy=50)
    setup = setup_vector(state)             # fine-grid counts, rows, sum of labels
    start_training(state, cuts, base_score) # bins rows with the federation's cut points
    for each tree:
        start_tree(state, t)                # g, h of the current global model on own rows
        for each level: vec = level_vector(state, LevelRequest)   # apply splits, histogram
        finish_tree(state, TreeDone)        # leaf values -> own margins

Subtraction trick: the service names, per split, the child with fewer rows federation-wide
(it knows both counts from the parent's summed histogram); every silo histograms only that
child, and the service derives its sibling as parent - child, exactly, on the integers.

Minimum rows per node: a silo refuses (`NodeTooSmallError`) a request for a node whose
federation-wide row count, as the request states it, is below its policy minimum, and refuses
a stated count below its own rows in that node (a service that lies). The refusal depends only
on what the service already knows, never on the silo's own count, so refusing leaks nothing;
a rule on the silo's *own* count would tell the service "I have fewer than m rows here".

Gradients per objective: binary:logistic g = p - y, h = p (1 - p); reg:squarederror
g = margin - y, h = 1; multi:softprob by softmax gradients, as XGBoost computes them: tree t
is for class k = t % K, and at the first tree of each boosting round (k = 0) the silo computes
p = softmax(margins) and every class's g_k = p_k - [y = k], h_k = max(2 p_k (1 - p_k), 1e-16)
once, then grows the round's K trees on them (`schemas.secure_hist.protocol` says why softmax
rather than one-vs-rest). Labels are the class index 0..K-1 for multi:softprob.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from schemas.objectives import base_score_to_margin, softmax
from schemas.secure_hist.errors import (
    HistConfigError,
    NodeTooSmallError,
    UnknownNodeError,
    Where,
)
from schemas.secure_hist.packing import Widths, level_widths
from schemas.secure_hist.protocol import (
    HistLayout,
    HistRunConfig,
    LevelRequest,
    NodeSplit,
    TreeDone,
    to_modular,
)
from silos.hist_binning import bin_matrix, fine_grid_counts


@dataclass
class HistSilo:
    """One silo's rows and progress in a secure-histogram run (never leaves the silo)."""

    name: str
    X: np.ndarray
    y: np.ndarray
    config: HistRunConfig
    min_rows_policy: int = 1
    layout: HistLayout | None = None
    codes: np.ndarray | None = None  # bin index + feature offset, int32 (n_rows, n_features)
    margin: np.ndarray = field(default_factory=lambda: np.zeros(0))  # (n,) or (n, K)
    round_g: np.ndarray = field(default_factory=lambda: np.zeros(0))  # multi:softprob (n, K)
    round_h: np.ndarray = field(default_factory=lambda: np.zeros(0))
    g: np.ndarray = field(default_factory=lambda: np.zeros(0))
    h: np.ndarray = field(default_factory=lambda: np.zeros(0))
    gq: np.ndarray = field(default_factory=lambda: np.zeros(0))  # g, h as the codec's integers
    hq: np.ndarray = field(default_factory=lambda: np.zeros(0))
    tree: int = -1
    depth: int = -1
    rows: dict[int, np.ndarray] = field(default_factory=dict)  # leaf node -> own row indices
    node_depth: dict[int, int] = field(default_factory=dict)
    rounding_stream: str = ""  # a Dask partition's own stream of the quantized rounding

    @classmethod
    def create(
        cls,
        name: str,
        X: np.ndarray,
        y: np.ndarray,
        config: HistRunConfig,
        min_rows_policy: int = 1,
    ) -> HistSilo:
        """Check the rows against the run and refuse a run below the silo's row minimum."""
        X = np.asarray(X, dtype=np.float32)
        if X.ndim != 2 or X.shape[1] != config.n_features or len(y) != X.shape[0]:
            raise HistConfigError(
                f"rows have shape {X.shape} with {len(y)} labels; the run has "
                f"{config.n_features} features",
                silo=name,
            )
        labels = np.asarray(y, dtype=np.float64)
        if config.num_class and not np.isin(labels, np.arange(config.num_class)).all():
            raise HistConfigError(
                f"multi:softprob labels must be class indices 0..{config.num_class - 1}",
                silo=name,
            )
        if config.min_rows_per_node < min_rows_policy:
            raise NodeTooSmallError(
                f"the run allows nodes of {config.min_rows_per_node} rows; this silo's policy "
                f"needs at least {min_rows_policy}: it does not join",
                silo=name,
            )
        return cls(name, X, np.asarray(y, dtype=np.float64), config, min_rows_policy)


def setup_vector(state: HistSilo) -> np.ndarray:
    """Fine-grid counts of every feature, then [rows, encoded sum of labels], as ``<u8``."""
    cfg = state.config
    counts = fine_grid_counts(state.X, cfg.ranges, cfg.fine_cells)
    if cfg.num_class:
        labels = np.bincount(state.y.astype(np.int64), minlength=cfg.num_class).astype(float)
    else:
        labels = np.array([cfg.label_codec.encode(state.y).sum()])
    return to_modular(np.concatenate([counts, [float(len(state.y))], labels]))


def start_training(
    state: HistSilo, cuts: Sequence[np.ndarray], base_score: float | Sequence[float]
) -> None:
    """Bin the rows with the federation's cut points; every margin starts at the base margin
    (K base margins for multi:softprob)."""
    layout = HistLayout.from_cuts(cuts)
    if len(layout.n_bins) != state.config.n_features:
        raise HistConfigError(
            f"{len(layout.n_bins)} features have cut points; the run has {state.config.n_features}",
            silo=state.name,
        )
    state.layout = layout
    offsets = layout.offsets.astype(np.int32)
    state.codes = bin_matrix(state.X, cuts).astype(np.int32) + offsets[None, :]
    objective, k = state.config.objective, state.config.per_round
    scores = np.atleast_1d(np.asarray(base_score, dtype=np.float64))
    if scores.size != k:
        raise HistConfigError(
            f"the service sent {scores.size} base score(s); the run has {k} output(s)",
            silo=state.name,
        )
    margins = [base_score_to_margin(float(b), objective) for b in scores]
    # float32, as XGBoost holds the base margin
    state.margin = np.tile(
        np.asarray(margins, dtype=np.float32).astype(np.float64), (len(state.y), 1)
    )
    if not state.config.num_class:
        state.margin = state.margin[:, 0]


def start_tree(state: HistSilo, tree: int, restart: bool = False) -> None:
    """Gradients and hessians of the current model on this silo's rows (float64).

    ``restart`` grows the current tree again from its root (after a silo left mid-tree, the
    histograms already summed for this tree include that silo's rows and are discarded).
    """
    if tree != state.tree + (0 if restart else 1):
        raise UnknownNodeError(
            f"asked to start tree {tree} after tree {state.tree}", silo=state.name, tree=tree
        )
    if state.config.objective == "binary:logistic":
        p = 1.0 / (1.0 + np.exp(-state.margin))
        state.g, state.h = p - state.y, np.maximum(p * (1.0 - p), 1e-16)
    elif state.config.num_class:
        k = tree % state.config.num_class
        if k != 0 and state.round_g.size == 0:
            raise UnknownNodeError(
                f"tree {tree} is for class {k}, but this silo never started its boosting round",
                silo=state.name,
                tree=tree,
            )
        if k == 0:
            # the round's gradients, from the margins before any of its trees
            p = softmax(state.margin)
            onehot = np.eye(state.config.num_class)[state.y.astype(np.int64)]
            state.round_g, state.round_h = p - onehot, np.maximum(2.0 * p * (1.0 - p), 1e-16)
        state.g, state.h = state.round_g[:, k], state.round_h[:, k]
    else:
        state.g, state.h = state.margin - state.y, np.ones_like(state.y)
    state.gq, state.hq = _quantize(state, tree)
    state.tree, state.depth = tree, -1
    state.rows = {0: np.arange(len(state.y))}
    state.node_depth = {0: 0}


def _quantize(state: HistSilo, tree: int) -> tuple[np.ndarray, np.ndarray]:
    """Every row's g and h as the codec's integers, once per tree, so that every node's
    histogram (and a sibling the service derives by subtraction) sums the same values. A
    stochastic codec draws from a generator seeded by the silo's name and the tree: the
    rounding is not a secret, and a silo that grows the tree again rounds it the same way."""
    codec = state.config.codec
    key = f"secure-hist rounding|{state.name}|{state.rounding_stream}|{tree}"
    digest = hashlib.sha256(key.encode()).digest()
    rng = np.random.default_rng(int.from_bytes(digest[:16], "big")) if codec.stochastic else None
    return codec.encode(state.g, rng), codec.encode(state.h, rng)


def _check_splits(state: HistSilo, splits: Sequence[NodeSplit], depth: int) -> None:
    assert state.layout is not None
    new: set[int] = set()
    for s in splits:
        where: Where = {"silo": state.name, "tree": state.tree, "depth": depth, "node": s.node}
        if s.node not in state.rows or state.node_depth[s.node] != depth - 1:
            raise UnknownNodeError(
                f"split of node {s.node}, which is not a leaf at depth {depth - 1} of this "
                "tree; the request does not continue the tree this silo holds",
                **where,
            )
        if not 0 <= s.feature < len(state.layout.n_bins):
            raise UnknownNodeError(f"split on unknown feature {s.feature}", **where)
        children = {s.left, s.right}
        if len(children) != 2 or children & (new | set(state.node_depth)):
            raise UnknownNodeError(f"children {s.left}, {s.right} reuse node ids", **where)
        new |= children


def apply_splits(state: HistSilo, splits: Sequence[NodeSplit], depth: int) -> None:
    """Route this silo's rows of each split node to its children (all checked first)."""
    _check_splits(state, splits, depth)
    assert state.layout is not None and state.codes is not None
    for s in splits:
        rows = state.rows.pop(s.node)
        b = state.codes[rows, s.feature] - int(state.layout.offsets[s.feature])
        missing = b == state.layout.n_bins[s.feature]
        left = np.where(missing, s.default_left, b <= s.bin)
        state.rows[s.left], state.rows[s.right] = rows[left], rows[~left]
        state.node_depth[s.left] = state.node_depth[s.right] = depth


def level_vector(state: HistSilo, request: LevelRequest) -> np.ndarray:
    """Apply the request's splits, then the g/h/count histograms of the requested nodes.

    Returns
    -------
    numpy.ndarray
        ``<u8`` of length len(request.compute) * layout.block (see `protocol`).

    Raises
    ------
    UnknownNodeError
        The request is for another tree or depth, splits a node that is not a current leaf,
        or asks for a node that does not exist after its splits.
    NodeTooSmallError
        A requested node's stated federation-wide rows are below this silo's policy minimum or
        below this silo's own rows in it.
    """
    where: Where = {"silo": state.name, "tree": request.tree, "depth": request.depth}
    if request.tree != state.tree or request.depth != state.depth + 1:
        raise UnknownNodeError(
            f"request for tree {request.tree} depth {request.depth}; this silo is at tree "
            f"{state.tree} depth {state.depth}",
            **where,
        )
    if request.depth == 0 and request.splits:
        raise UnknownNodeError("the root level cannot carry splits", **where)
    _check_splits(state, request.splits, request.depth)
    at_depth = {n for s in request.splits for n in (s.left, s.right)} or {0}
    for c in request.compute:
        if c.node not in at_depth or (request.depth == 0) != (c.node == 0):
            raise UnknownNodeError(
                f"histogram asked for node {c.node}, not a leaf at depth {request.depth} once "
                "this request's splits are applied",
                silo=state.name,
                tree=request.tree,
                depth=request.depth,
                node=c.node,
            )
        _check_compute(state, request, c.node, c.rows)
    apply_splits(state, request.splits, request.depth)
    state.depth = request.depth
    blocks = [node_histograms(state, state.rows[c.node]) for c in request.compute]
    return to_modular(np.concatenate(blocks)) if blocks else np.zeros(0, dtype="<u8")


def wire_widths(state: HistSilo, request: LevelRequest) -> Widths:
    """Wire widths of `request`'s level vector, from its nodes' federation-wide rows."""
    assert state.layout is not None
    return level_widths(state.config, state.layout.total, [c.rows for c in request.compute])


def _check_compute(state: HistSilo, request: LevelRequest, node: int, rows: int) -> None:
    where: Where = {"silo": state.name, "tree": request.tree, "depth": request.depth, "node": node}
    minimum = max(state.min_rows_policy, state.config.min_rows_per_node)
    if rows < minimum:
        raise NodeTooSmallError(
            f"the service asks for the histograms of a node of {rows} rows; this silo's "
            f"policy reports no node of fewer than {minimum} rows",
            **where,
        )
    own = _rows_after_splits(state, request, node)
    if own is not None and own > rows:
        raise NodeTooSmallError(
            f"the service states {rows} rows federation-wide for this node but this silo alone "
            f"holds {own}: the request is inconsistent, refusing",
            **where,
        )


def _rows_after_splits(state: HistSilo, request: LevelRequest, node: int) -> int | None:
    """This silo's rows in `node` once the request's splits are applied (None if unknown)."""
    if node in state.rows and node not in {s.node for s in request.splits}:
        return len(state.rows[node])
    assert state.layout is not None and state.codes is not None
    for s in request.splits:
        if node in (s.left, s.right) and s.node in state.rows:
            rows = state.rows[s.node]
            b = state.codes[rows, s.feature] - int(state.layout.offsets[s.feature])
            missing = b == state.layout.n_bins[s.feature]
            left = int(np.where(missing, s.default_left, b <= s.bin).sum())
            return left if node == s.left else len(rows) - left
    return None


def node_histograms(state: HistSilo, rows: np.ndarray) -> np.ndarray:
    """One node's block [g | h | counts] over every feature's slots, as exact float64 integers.

    float64 `np.bincount` sums exactly: every value is an integer and every partial sum stays
    below 2^53 (`protocol.scale_bits_for`).
    """
    assert state.layout is not None and state.codes is not None
    total, n_features = state.layout.total, state.codes.shape[1]
    idx = state.codes[rows].ravel()
    counts = np.bincount(idx, minlength=total).astype(np.float64)
    g_hist = np.bincount(idx, weights=np.repeat(state.gq[rows], n_features), minlength=total)
    h_hist = np.bincount(idx, weights=np.repeat(state.hq[rows], n_features), minlength=total)
    return np.concatenate([g_hist, h_hist, counts])


def finish_tree(state: HistSilo, done: TreeDone) -> None:
    """Apply the tree's last splits and add each leaf's value to the margins of its rows."""
    if done.tree != state.tree:
        raise UnknownNodeError(
            f"tree {done.tree} finished while this silo grows tree {state.tree}",
            silo=state.name,
            tree=done.tree,
        )
    apply_splits(state, done.splits, state.depth + 1)
    values = dict(done.leaves)
    for node, rows in state.rows.items():
        if node not in values:
            raise UnknownNodeError(
                "the finished tree gives no value for this leaf",
                silo=state.name,
                tree=done.tree,
                node=node,
            )
        if state.config.num_class:
            state.margin[rows, done.tree % state.config.num_class] += np.float32(values[node])
        else:
            state.margin[rows] += np.float32(values[node])
    extra = sorted(set(values) - set(state.rows))
    if extra:
        raise UnknownNodeError(
            f"the finished tree gives values for nodes {extra} that are not leaves here",
            silo=state.name,
            tree=done.tree,
            node=extra[0],
        )
