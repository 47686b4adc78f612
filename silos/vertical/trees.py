"""What every party of vertical SecureBoost shares: parameters, binning, exact histograms,
XGBoost's split gain, and the split tree whose passive nodes are opaque records.

Histograms hold the fixed-point integer sums of silos/vertical/he.py (int64: exact for up to
MAX_ROWS = 2^22 rows), so the encrypted protocol and `fit_plain` (the same algorithm with
every column in one place, the losslessness reference) see identical numbers and grow
identical trees.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from silos.vertical.he import FRAC_BITS

# every party of a run refuses more rows: a row's |G| and H are at most 2^40,
# so 2^22 rows keep every sum, and every difference of sums, below 2^63 (int64), and within
# he.MAX_ROWS, what the packed slots hold
MAX_ROWS = 1 << 22
_SCALE = float(1 << FRAC_BITS)


@dataclass(frozen=True)
class BoostParams:
    """XGBoost's meaning: eta, reg_lambda, gamma (min_split_loss), min_child_weight."""

    n_trees: int = 5
    max_depth: int = 3
    eta: float = 0.3
    reg_lambda: float = 1.0
    gamma: float = 0.0
    min_child_weight: float = 1.0
    n_bins: int = 32

    @property
    def min_child_rows(self) -> int:
        """The fewest rows a child of a split can have: a split needs a hessian sum of at
        least min_child_weight on each side and a row's logistic hessian p(1 - p) is at most
        1/4 (2^38 in fixed point, exactly), so fewer rows cannot reach it."""
        return math.ceil(4 * self.min_child_weight)

    @property
    def max_splits(self) -> int:
        """Split nodes in a tree of max_depth: every node above the last level."""
        return (1 << self.max_depth) - 1


def depth_of(node: int) -> int:
    """A node's depth in the numbering every trainer uses (children of k: 2k + 1, 2k + 2)."""
    return (node + 1).bit_length() - 1


def quantile_cuts(x: np.ndarray, n_bins: int) -> np.ndarray:
    """Upper edges of a column's quantile bins: bin b holds cuts[b-1] < x <= cuts[b]."""
    qs = np.quantile(x.astype(np.float64), np.arange(1, n_bins) / n_bins, method="lower")
    cuts = np.unique(qs)
    return cuts[cuts < x.max()] if x.size else cuts


def bin_columns(X: np.ndarray, cuts: list[np.ndarray]) -> np.ndarray:
    out = np.empty(X.shape, dtype=np.int32)
    for f, c in enumerate(cuts):
        out[:, f] = np.searchsorted(c, X[:, f], side="left")
    return out


def logistic_grad(y: np.ndarray, margin: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    p = 1.0 / (1.0 + np.exp(-margin))
    return p - y, p * (1.0 - p)


def plain_histograms(
    bins: np.ndarray, rows: np.ndarray, gi: np.ndarray, hi: np.ndarray, n_bins: list[int]
) -> list[np.ndarray]:
    """Exact int64 (G, H, count) sums per bin for each column of `bins`, over `rows`."""
    out = []
    for f, nb in enumerate(n_bins):
        acc = np.zeros((nb, 3), dtype=np.int64)
        b = bins[rows, f]
        np.add.at(acc[:, 0], b, gi[rows])
        np.add.at(acc[:, 1], b, hi[rows])
        np.add.at(acc[:, 2], b, 1)
        out.append(acc)
    return out


@dataclass(frozen=True)
class Split:
    gain: float
    feature: int  # global feature index: active features first, then each passive party's
    bin: int


def best_split(hists: list[np.ndarray], p: BoostParams) -> Split | None:
    """XGBoost's exact greedy choice over histogram bins (rows with bin <= b go left)."""
    best: Split | None = None
    lam = p.reg_lambda
    for f, h in enumerate(hists):
        if len(h) < 2:
            continue
        cum = np.cumsum(h[:-1, :2], axis=0).astype(np.float64) / _SCALE
        tot = h[:, :2].sum(axis=0).astype(np.float64) / _SCALE
        gl, hl = cum[:, 0], cum[:, 1]
        gr, hr = tot[0] - gl, tot[1] - hl
        gain = gl**2 / (hl + lam) + gr**2 / (hr + lam) - tot[0] ** 2 / (tot[1] + lam)
        ok = (hl >= p.min_child_weight) & (hr >= p.min_child_weight)
        if not ok.any():
            continue
        gain = np.where(ok, gain, -np.inf)
        b = int(np.argmax(gain))
        if best is None or gain[b] > best.gain:
            best = Split(float(gain[b]), f, b)
    if best is None or not best.gain > max(p.gamma, 1e-6):
        return None
    return best


def leaf_weight(h: np.ndarray, p: BoostParams) -> float:
    tot = h[:, :2].sum(axis=0).astype(np.float64) / _SCALE
    return float(-tot[0] / (tot[1] + p.reg_lambda) * p.eta)


@dataclass
class Node:
    """A split (owner + feature/bin for the active party's own, record for a passive one's)
    or a leaf (weight)."""

    owner: str | None = None
    feature: int = -1  # the owner's local feature index
    bin: int = -1  # known to the active party even for passive features (not the threshold)
    record: int = -1  # passive owner's lookup id
    left: int = -1
    right: int = -1
    weight: float = 0.0

    @property
    def is_leaf(self) -> bool:
        return self.owner is None


@dataclass
class Tree:
    nodes: dict[int, Node] = field(default_factory=dict)

    def lineage(self) -> list[dict[str, object]]:
        """Who split where, without thresholds: for the run's lineage."""
        return [
            {"node": k, "party": n.owner, "feature": n.feature}
            for k, n in sorted(self.nodes.items())
            if not n.is_leaf
        ]


def route(tree: Tree, go_left: dict[int, np.ndarray], n_rows: int) -> np.ndarray:
    """Leaf weight per row, given each split node's boolean left mask over all rows."""
    out = np.zeros(n_rows)
    stack = [(0, np.arange(n_rows))]
    while stack:
        nid, rows = stack.pop()
        node = tree.nodes[nid]
        if node.is_leaf:
            out[rows] = node.weight
            continue
        mask = go_left[nid][rows]
        stack.append((node.left, rows[mask]))
        stack.append((node.right, rows[~mask]))
    return out
