"""XGBoost's split search over one node's summed histograms, vectorised over features and bins.

Mirrors `HistEvaluator::EnumerateSplit` of XGBoost's `hist` updater (src/tree/hist/
evaluate_splits.h) so that the same histograms give the same split:

* forward scan (missing values go right, ``default_left = false``): left = bins <= b,
  threshold ``cuts[b]`` (b = last bin: every present value left, only missing right);
* backward scan, only when the node has missing values for that feature (missing go left):
  right = bins >= i, threshold ``cuts[i - 1]`` (i = 0: every present value right);
* gain(G, H) = T(G)^2 / (H + lambda) with T the L1 soft threshold (alpha), 0 when H <
  min_child_weight; loss_chg = gain(L) + gain(R) - gain(parent), compared in float32;
* a candidate needs H >= min_child_weight on both sides; ties keep the first candidate in
  XGBoost's order (feature ascending, forward before backward, forward bins ascending,
  backward bins descending);
* the best split is used when loss_chg > 1e-6 (kRtEps), loss_chg >= gamma and both hessian
  sums are non-zero (`CPUExpandEntry::IsValidImpl`).

One addition: both children must hold at least `min_rows` rows federation-wide (the counts
travel in the histograms), so no leaf or histogram describes fewer rows than that.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from schemas.secure_hist.protocol import HistLayout
from schemas.tree_params import XGBoostParams

RT_EPS = 1e-6


@dataclass(frozen=True)
class Stats:
    """A node's sums as exact integers: encoded g, encoded h, rows."""

    g: int
    h: int
    rows: int


@dataclass(frozen=True)
class SplitChoice:
    """The best split of a node: rows with bin <= `bin` of `feature` go left."""

    feature: int
    bin: int
    default_left: bool
    loss_chg: float
    left: Stats
    right: Stats


def calc_gain(g: np.ndarray, h: np.ndarray, params: XGBoostParams) -> np.ndarray:
    """XGBoost's CalcGain (max_delta_step 0): T(G)^2 / (H + lambda), 0 below min_child_weight."""
    t = np.sign(g) * np.maximum(np.abs(g) - params.reg_alpha, 0.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        gain = t * t / (h + params.reg_lambda)
    return np.where((h < params.min_child_weight) | (h <= 0), 0.0, gain)


def calc_weight(g: float, h: float, params: XGBoostParams) -> float:
    """XGBoost's CalcWeight: -T(G) / (H + lambda), 0 below min_child_weight."""
    if h < params.min_child_weight or h <= 0:
        return 0.0
    t = float(np.sign(g)) * max(abs(g) - params.reg_alpha, 0.0)
    return -t / (h + params.reg_lambda)


def _padded(layout: HistLayout) -> tuple[np.ndarray, np.ndarray]:
    """Index of every (feature, bin) into a node block row, padding -> a zero slot."""
    n_bins = np.asarray(layout.n_bins)
    width = int(n_bins.max())
    pos = np.arange(width)[None, :]
    valid = pos < n_bins[:, None]
    index = np.where(valid, layout.offsets[:, None] + pos, layout.total)
    return index, valid


def best_split(
    block: np.ndarray,
    parent: Stats,
    layout: HistLayout,
    params: XGBoostParams,
    scale: float,
    min_rows: int,
) -> SplitChoice | None:
    """The best valid split of a node from its integer block (3, layout.total), or None."""
    index, valid = _padded(layout)
    ext = np.concatenate([block, np.zeros((3, 1), dtype=np.int64)], axis=1)
    bins = ext[:, index]  # (3, F, B) integers
    missing_slots = layout.offsets + np.asarray(layout.n_bins)
    has_missing = (block[0, missing_slots] != 0) | (block[1, missing_slots] != 0)
    p = np.array([parent.g, parent.h, parent.rows], dtype=np.int64)[:, None, None]
    n_bins = np.asarray(layout.n_bins)

    fwd_left = np.cumsum(bins, axis=2)  # left = bins <= b, missing right
    suffix = np.cumsum(bins[:, :, ::-1], axis=2)[:, :, ::-1]  # right = bins >= i
    # backward candidates in XGBoost's order: i = n_bins - 1 down to 0
    back_i = np.clip(n_bins[:, None] - 1 - np.arange(bins.shape[2])[None, :], 0, None)
    back_right = np.take_along_axis(suffix, back_i[None, :, :], axis=2)
    lefts = np.stack([fwd_left, p - back_right], axis=2)  # (3, F, 2, B)
    rights = p[..., None] - lefts
    allowed = np.stack([valid, valid & has_missing[:, None]], axis=1)

    pg, ph = parent.g / scale, parent.h / scale
    gl, hl = lefts[0] / scale, lefts[1] / scale
    gr, hr = rights[0] / scale, rights[1] / scale
    root_gain = calc_gain(np.array(pg), np.array(ph), params)
    loss = (calc_gain(gl, hl, params) + calc_gain(gr, hr, params) - root_gain).astype(np.float32)
    ok = (
        allowed
        & (hl >= params.min_child_weight)
        & (hr >= params.min_child_weight)
        & (lefts[2] >= min_rows)
        & (rights[2] >= min_rows)
    )
    loss = np.where(ok, loss, -np.inf).astype(np.float32)
    best = int(np.argmax(loss))  # first maximum: XGBoost's tie-breaking order
    f, direction, k = np.unravel_index(best, loss.shape)
    chg = float(loss[f, direction, k])
    if not np.isfinite(chg) or chg <= RT_EPS or chg < params.gamma:
        return None
    left = Stats(*(int(v) for v in lefts[:, f, direction, k]))
    right = Stats(*(int(v) for v in rights[:, f, direction, k]))
    if left.h == 0 or right.h == 0:
        return None
    if direction == 0:
        return SplitChoice(int(f), int(k), False, chg, left, right)
    return SplitChoice(int(f), int(back_i[f, k]) - 1, True, chg, left, right)
