"""What silos and the service exchange in secure-histogram boosting, and how vectors are laid out.

This module is the shared contract of both sides (like `schemas`): silos import it and nothing
else from `aggregation.trees.secure_hist`. Numbers that are summed travel only inside secure
aggregation (`silos.secagg.session`); everything here is public to the service.

Fixed-point encoding (`GradCodec`)
    A gradient g is sent as the integer q = rint(clip(g, -B, B) * 2^S). Histograms are sums of
    these integers, built at the silo with float64 `np.bincount`, which is exact as long as
    every partial sum stays below 2^53. The run fixes B (`grad_bound`: 1 for binary:logistic,
    whose |g| <= 1 and h <= 1/4, and for multi:softprob, whose |g_k| <= 1 and h_k <= 1/2; for
    squared error, whose g = prediction - label is unbounded and h = 1, a bound on |g| and on
    |label| that the service derives from the contract's target range [lo, hi] as
    max(1, |lo|, |hi|, 2 (hi - lo)): predictions stay near [lo, hi], so |g| rarely approaches
    it, and a row whose |g| exceeds it is clipped to +-B, which the run accepts as the price of
    a public bound; the masking stays exact, only that row's gradient differs from XGBoost's)
    and an upper bound N on the federation's total rows, and picks the largest S
    with N * max(B, 1) * 2^S <= 2^53 (capped at 40). So no sum of any silo, and no sum over
    silos, can exceed 2^53 in magnitude: it fits the 64-bit secure-aggregation modulus with
    2^10 to spare, never wraps, and reads back exactly as a signed integer.
    Precision: each row's g and h are off by at most 2^-(S+1) (round to nearest), so a
    histogram bin of n rows is within n * 2^-(S+1) of the float64 sum. With N = 2^28 rows and
    B = 1, S = 25: 1.5e-8 per row, finer than the float32 gradients XGBoost itself sums.
    Counts are sent as exact integers. On the wire each masked entry takes only the bits its
    federation sum needs (`schemas.secure_hist.packing`), exactly.

Quantized gradients (`grad_bits`, opt-in)
    A run may fix S itself, below the bound above, to send fewer bits per histogram cell
    (a cell of n rows needs about log2 n + S bits). Rounding to nearest at a small S biases
    every cell the same way (h = 0.01 at S = 3 always becomes 0), so a quantized run rounds
    stochastically instead: q = floor(v 2^S) + [u < frac(v 2^S)], u uniform in [0, 1), so
    E[q] = v 2^S and the errors of a cell's rows average out (LightGBM's quantized training,
    Shi et al., NeurIPS 2022, with its leaf values taken from the same quantized sums).
    floor(v 2^S + u) would do the same in exact arithmetic, but in float64 it can round a
    value on the grid one step up, past the wire's bound. Each silo rounds every row once per
    tree, from a generator seeded by its name and the tree, so every node's histogram, and a
    sibling derived by subtraction, sums the same rounded values, and a silo that replays a
    tree rounds it the same way. The label sum of the setup vector keeps the lossless S (it
    sets the base score). The model is no longer XGBoost's exactly; what it costs in AUC, and
    saves in bytes, `bench/secure_hist.py` prints.

Tasks
    binary:logistic and reg:squarederror grow one tree per boosting round. multi:softprob with
    K classes grows K trees per round by softmax gradients, as XGBoost does (tree t is for
    class t % K; at the start of each round every silo computes p = softmax(margins) and, per
    class k, g_k = p_k - [y = k], h_k = max(2 p_k (1 - p_k), 1e-16), then grows the round's K
    trees on them and adds each tree's leaves to its class's margins). Softmax rather than
    one-vs-rest because the exported model is then exactly XGBoost's multi:softprob: same
    gradients, same trees, so it loads natively and equals centralised XGBoost; one-vs-rest
    would need K independent binary models and its probabilities do not sum to one.

Setup vector
    Per feature the fine-grid counts (+ missing), then the rows, then the label statistics:
    the encoded label sum (binary, regression) or the K class counts (multi:softprob), from
    which the service sets the base score as XGBoost would (`cuts.base_score_from_setup`).

Histogram layout (`HistLayout`)
    Feature f has `n_bins[f]` = len(cuts[f]) + 1 bins of present values plus one slot for
    missing values (its own bin), `width[f]` = n_bins[f] + 1. A node's block is
    [g over all features' slots | h over the same | row counts over the same], 3 * total
    entries; a level vector is the blocks of the requested nodes in request order.

Bins
    Bin k of feature f holds cuts[f][k-1] <= x < cuts[f][k] (float32 comparisons, the first and
    last bins unbounded), i.e. bin = searchsorted(cuts, x, "right"); NaN is missing. A split
    "bin <= b goes left" is the XGBoost condition x < cuts[f][b].
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from schemas.objectives import TreeObjective
from schemas.secure_hist.errors import HistConfigError, HistVectorError
from schemas.tree_params import XGBoostParams

EXACT_BITS = 53  # float64 integers are exact below 2^53
MAX_SCALE_BITS = 40
STATS = 3  # gradient, hessian, count


def scale_bits_for(max_rows: int, grad_bound: float) -> int:
    """Largest S <= 40 with max_rows * max(B, 1) * 2^S <= 2^53 (see module docstring)."""
    if max_rows < 1 or not (math.isfinite(grad_bound) and grad_bound > 0):
        raise HistConfigError(
            f"max_rows must be >= 1 and grad_bound > 0, got {max_rows} and {grad_bound}"
        )
    s = math.floor(EXACT_BITS - math.log2(max_rows * max(grad_bound, 1.0)))
    if s < 8:
        raise HistConfigError(
            f"max_rows {max_rows} x grad_bound {grad_bound} leaves only {s} fractional bits; "
            "lower the bound on the federation's rows or on the gradients"
        )
    return min(s, MAX_SCALE_BITS)


AUTO_MIN_CELLS = 4096  # the fixed default before the grid followed the data
AUTO_MAX_CELLS = 2**16  # bounds the setup vector: n_features * (cells + 1) entries


def auto_fine_cells(ranges: Sequence[tuple[float, float]], max_bin: int) -> int:
    """The fine grid of a run that leaves `fine_cells` unset: max_bin / 2 cells per unit of the
    widest feature range, as a power of two in [max(4096, max_bin), 2^16].

    For a standardising contract the ranges are in federation standard deviations
    (`schemas.contracts.stats.feature_ranges`). A quantile bin holding 1/max_bin of a normal
    column's rows is 1 / (0.4 max_bin) std wide at the mode, so max_bin / 2 cells per std give
    every such bin a cell of its own. A heavy-tailed column, whose few large values stretch its
    range to dozens of stds while most rows sit within a fraction of one, needs this most: the
    banks' payment amounts span up to 113 std, and 4096 cells left them 44-48 of 256 bins
    where this rule's 16384 give 86-100 (`bench/tasks.py`). Range-scaled features ([0, 1])
    get the floor.
    """
    widest = max((hi - lo for lo, hi in ranges), default=1.0)
    wanted = max(AUTO_MIN_CELLS, max_bin, math.ceil(widest * max_bin / 2))
    return int(min(AUTO_MAX_CELLS, 2 ** math.ceil(math.log2(wanted))))


@dataclass(frozen=True)
class GradCodec:
    """Fixed-point encoding of per-row gradients, hessians and labels (see module docstring)."""

    scale_bits: int
    grad_bound: float
    stochastic: bool = False  # quantized runs: unbiased stochastic rounding

    @property
    def scale(self) -> float:
        return float(2**self.scale_bits)

    def encode(self, values: np.ndarray, rng: np.random.Generator | None = None) -> np.ndarray:
        """float64 integers of clip(v, -B, B) * 2^S (exact in float64): rounded to nearest,
        or, for a stochastic codec, down or up with probabilities that make E[q] = v 2^S."""
        b = self.grad_bound
        x = np.clip(np.asarray(values, dtype=np.float64), -b, b) * self.scale
        if not self.stochastic:
            return np.rint(x)
        if rng is None:
            raise ValueError("a stochastic codec needs the silo's random generator")
        low = np.floor(x)  # up with probability x - low; never past ceil(x), unlike floor(x + u)
        return low + (rng.random(x.shape) < x - low)

    def decode(self, integers: np.ndarray) -> np.ndarray:
        """Signed integer sums back to float64 values."""
        return np.asarray(integers, dtype=np.float64) / self.scale


def to_modular(integers: np.ndarray) -> np.ndarray:
    """Exact float64 integers (|v| < 2^53) as two's-complement ``<u8`` for secure aggregation."""
    return np.ascontiguousarray(integers.astype(np.int64).view("<u8"))


def from_modular(total: np.ndarray) -> np.ndarray:
    """A modular sum (``<u8``) read back as signed int64 (exact: the sum never wraps)."""
    return np.ascontiguousarray(total, dtype="<u8").view(np.int64)


@dataclass(frozen=True)
class HistRunConfig:
    """Everything silos and service agree on before a secure-histogram run starts.

    Parameters
    ----------
    objective
        binary:logistic, multi:softprob (with `num_class`) or reg:squarederror.
    params
        XGBoost hyperparameters (max_depth, eta, lambda, alpha, gamma, min_child_weight,
        max_bin; subsample/colsample must stay 1).
    n_trees
        Trees, not boosting rounds: multi:softprob grows `num_class` trees a boosting round,
        so it is rounds * num_class there (`export_xgb` refuses a partial round).
    ranges
        Per feature (low, high): the contract's range, bounds the fine binning grid.
    fine_cells
        Cells of the fine grid per feature (quantiles are read off it).
    min_rows_per_node
        Neither child of a split may hold fewer rows (federation-wide); silos check it.
    max_rows
        Upper bound on the federation's total training rows (sets the precision).
    grad_bound
        B: |gradient| and |label| are clipped to it (1 for the classification objectives).
    grad_bits
        None (the default): the largest S the bound allows, rounded to nearest (lossless: the
        model equals XGBoost's). An int: that S, at most the bound, rounded stochastically
        (fewer bits a cell; see "Quantized gradients").
    num_class
        K for multi:softprob (K trees per boosting round), else 0.
    packed
        Masked vectors travel at the bit width their sums need (`packing`); False keeps
        64 bits per entry (same sums, same model, for comparison).
    """

    objective: TreeObjective
    params: XGBoostParams
    n_trees: int
    ranges: tuple[tuple[float, float], ...]
    fine_cells: int = 4096
    min_rows_per_node: int = 1
    max_rows: int = 2**28
    grad_bound: float = 1.0
    num_class: int = 0
    packed: bool = True
    grad_bits: int | None = None

    def __post_init__(self) -> None:
        multi = self.objective == "multi:softprob"
        if multi and self.num_class < 2 or not multi and self.num_class != 0:
            raise HistConfigError(
                f"objective {self.objective} with num_class {self.num_class}: multi:softprob "
                "needs num_class >= 2 (the classes), the other objectives 0"
            )
        if self.params.subsample != 1.0 or self.params.colsample_bytree != 1.0:
            raise HistConfigError(
                "secure-hist grows every tree on all rows and features: "
                "subsample and colsample_bytree must be 1"
            )
        if self.n_trees < 1 or self.min_rows_per_node < 1:
            raise HistConfigError("n_trees and min_rows_per_node must be >= 1")
        if not 2 <= self.fine_cells <= 2**20 or self.fine_cells < self.params.max_bin:
            raise HistConfigError(
                f"fine_cells must be in [max_bin={self.params.max_bin}, 2^20], "
                f"got {self.fine_cells}"
            )
        for f, (lo, hi) in enumerate(self.ranges):
            if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
                raise HistConfigError(f"feature {f}: range ({lo}, {hi}) must be finite, low < high")
        if self.objective != "reg:squarederror" and self.grad_bound < 1.0:
            raise HistConfigError(f"{self.objective} gradients reach 1: grad_bound must be >= 1")
        lossless = scale_bits_for(self.max_rows, self.grad_bound)
        if self.grad_bits is not None and not 1 <= self.grad_bits <= lossless:
            raise HistConfigError(
                f"grad_bits {self.grad_bits} must be in [1, {lossless}]: above {lossless} "
                f"fractional bits, {self.max_rows} rows x grad_bound {self.grad_bound} could "
                "leave the exact range"
            )

    @property
    def n_features(self) -> int:
        return len(self.ranges)

    @property
    def per_round(self) -> int:
        """Trees per boosting round: K for multi:softprob, else 1."""
        return max(self.num_class, 1)

    @property
    def label_stats(self) -> int:
        """Label entries at the end of the setup vector: K class counts, or the label sum."""
        return self.num_class if self.num_class else 1

    @property
    def codec(self) -> GradCodec:
        """How rows' gradients and hessians become integers (quantized when grad_bits is set)."""
        if self.grad_bits is None:
            return self.label_codec
        return GradCodec(self.grad_bits, self.grad_bound, stochastic=True)

    @property
    def label_codec(self) -> GradCodec:
        """The lossless codec: the setup vector's label sum, whatever grad_bits is."""
        return GradCodec(scale_bits_for(self.max_rows, self.grad_bound), self.grad_bound)

    def setup_length(self) -> int:
        """Length of the setup vector: fine-grid counts (+ missing) per feature, rows, labels."""
        return self.n_features * (self.fine_cells + 1) + 1 + self.label_stats

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["params"] = self.params.model_dump(by_alias=True)
        out["ranges"] = [list(r) for r in self.ranges]
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> HistRunConfig:
        return cls(
            **{
                **data,
                "params": XGBoostParams.model_validate(data["params"]),
                "ranges": tuple((float(lo), float(hi)) for lo, hi in data["ranges"]),
            }
        )


@dataclass(frozen=True)
class HistLayout:
    """Offsets of every feature's bins in a node block (derived from the cut points)."""

    n_bins: tuple[int, ...]
    offsets: np.ndarray = field(repr=False, compare=False)
    total: int = 0

    @classmethod
    def from_cuts(cls, cuts: Sequence[np.ndarray]) -> HistLayout:
        n_bins = tuple(len(c) + 1 for c in cuts)
        widths = np.array([b + 1 for b in n_bins], dtype=np.int64)
        offsets = np.concatenate([[0], np.cumsum(widths)[:-1]]).astype(np.int64)
        return cls(n_bins, offsets, int(widths.sum()))

    @property
    def block(self) -> int:
        """Entries of one node's block: g, h and counts over every slot."""
        return STATS * self.total

    def missing_slot(self, feature: int) -> int:
        return int(self.offsets[feature]) + self.n_bins[feature]

    def check_level(
        self, vector: np.ndarray, n_nodes: int, *, silo: str | None, tree: int, depth: int
    ) -> None:
        """Raise HistVectorError unless `vector` is a ``<u8`` level vector of `n_nodes` blocks."""
        expected = n_nodes * self.block
        if vector.ndim != 1 or vector.size != expected or vector.dtype != np.dtype("<u8"):
            raise HistVectorError(
                f"histogram vector has shape {vector.shape} and dtype {vector.dtype}; this level "
                f"asks for {n_nodes} node(s) x {self.block} = {expected} entries of <u8",
                silo=silo,
                tree=tree,
                depth=depth,
            )


@dataclass(frozen=True)
class NodeSplit:
    """A split the service decided: rows of `node` with bin <= `bin` of `feature` go left.

    `bin` = -1 sends every present value right; `bin` = n_bins - 1 sends every present value
    left; missing values follow `default_left`. Children get ids `left` and `right`.
    """

    node: int
    feature: int
    bin: int
    default_left: bool
    left: int
    right: int


@dataclass(frozen=True)
class NodeCount:
    """A node whose histograms a level asks for, with its federation-wide row count."""

    node: int
    rows: int


@dataclass(frozen=True)
class LevelRequest:
    """Service -> silos, once per depth level: apply `splits`, then histogram `compute`.

    `counter` is the secure-aggregation counter of this level's vector. Nodes not listed in
    `compute` need no histogram from the silos (the service derives a larger sibling by
    subtraction, and nodes at max_depth or too small to split become leaves).
    """

    tree: int
    depth: int
    counter: int
    splits: tuple[NodeSplit, ...]
    compute: tuple[NodeCount, ...]

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> LevelRequest:
        d = json.loads(raw)
        return cls(
            d["tree"],
            d["depth"],
            d["counter"],
            tuple(NodeSplit(**s) for s in d["splits"]),
            tuple(NodeCount(**c) for c in d["compute"]),
        )


@dataclass(frozen=True)
class TreeDone:
    """Service -> silos: the finished tree's last splits and every leaf's value (eta applied)."""

    tree: int
    splits: tuple[NodeSplit, ...]
    leaves: tuple[tuple[int, float], ...]

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> TreeDone:
        d = json.loads(raw)
        return cls(
            d["tree"],
            tuple(NodeSplit(**s) for s in d["splits"]),
            tuple((int(n), float(v)) for n, v in d["leaves"]),
        )


def grid_edges(low: float, high: float, cells: int) -> np.ndarray:
    """The cells + 1 float32 edges of one feature's fine grid (public: from the contract)."""
    steps = np.arange(cells + 1, dtype=np.float64) / cells
    return (low + (high - low) * steps).astype(np.float32)


def cuts_to_json(cuts: Sequence[np.ndarray]) -> bytes:
    """Cut points as JSON (float32 values written exactly via float64 repr)."""
    return json.dumps([[float(v) for v in c] for c in cuts], separators=(",", ":")).encode()


def cuts_from_json(raw: bytes) -> list[np.ndarray]:
    return [np.asarray(c, dtype=np.float32) for c in json.loads(raw)]


def split_threshold(cuts: np.ndarray, bin_: int) -> float:
    """XGBoost's split_condition for "bin <= bin_ goes left" (see `NodeSplit`)."""
    if bin_ < 0:
        return float(-np.finfo(np.float32).max)  # every present value goes right
    if bin_ >= len(cuts):
        return float(np.finfo(np.float32).max)  # every present value goes left
    return float(cuts[bin_])
