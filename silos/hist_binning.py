"""A silo's side of federated quantile binning: fine-grid counts, then bins from global cuts.

Federated binning in two steps, without any silo revealing its own quantiles:

1. Every silo counts its rows per cell of a fine grid that the run fixes from the contract's
   ranges alone (`fine_grid_counts`: `fine_cells` equal cells over [low, high] per feature,
   values outside clipped into the end cells, missing values counted in an extra slot). The
   count vectors are summed by secure aggregation, so the service learns only the federation's
   histogram on that public grid.
2. The service reads global quantile cut points off the summed counts (every cut is a grid
   edge) and sends them back; every silo bins its rows with them (`bin_matrix`).

Cells are assigned with the same float32 comparisons that binning uses later, so a bin the
service believes non-empty is non-empty at the silos.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from schemas.contracts.stats import feature_ranges as shared_feature_ranges
from schemas.secure_hist.errors import HistConfigError
from schemas.secure_hist.protocol import HistLayout, grid_edges
from silos.features import FeaturePipeline


def grid_cells(x: np.ndarray, low: float, high: float, cells: int) -> np.ndarray:
    """Cell index (0..cells-1) of each present float32 value; NaN gets `cells` (missing).

    The float64 estimate is corrected against the float32 edges so that cell >= k exactly
    when x >= edges[k], the comparison binning by cut points uses.
    """
    x32 = np.asarray(x, dtype=np.float32)
    missing = np.isnan(x32)
    filled = np.where(missing, np.float32(low), x32)
    edges = grid_edges(low, high, cells)
    est = np.floor((filled.astype(np.float64) - low) / (high - low) * cells)
    cell = np.clip(est, 0, cells - 1).astype(np.int64)
    cell -= (filled < edges[cell]) & (cell > 0)
    cell += (filled >= edges[np.minimum(cell + 1, cells)]) & (cell < cells - 1)
    cell[missing] = cells
    return cell


def fine_grid_counts(
    X: np.ndarray, ranges: Sequence[tuple[float, float]], cells: int
) -> np.ndarray:
    """Rows per fine-grid cell, feature after feature, each followed by its missing count.

    Returns
    -------
    numpy.ndarray
        float64 integers of length ``n_features * (cells + 1)``.
    """
    if X.ndim != 2 or X.shape[1] != len(ranges):
        raise HistConfigError(
            f"feature matrix has shape {X.shape}; the run's contract declares "
            f"{len(ranges)} feature ranges"
        )
    out = np.empty(len(ranges) * (cells + 1), dtype=np.float64)
    for f, (low, high) in enumerate(ranges):
        cell = grid_cells(X[:, f], low, high, cells)
        out[f * (cells + 1) : (f + 1) * (cells + 1)] = np.bincount(cell, minlength=cells + 1)
    return out


def bin_matrix(X: np.ndarray, cuts: Sequence[np.ndarray]) -> np.ndarray:
    """Bin index of every value: searchsorted(cuts[f], x, "right"); missing -> n_bins[f].

    Returns
    -------
    numpy.ndarray
        uint8 (or uint16 beyond 255 bins) of shape X.shape.
    """
    layout = HistLayout.from_cuts(cuts)
    dtype = np.uint8 if max(layout.n_bins) < 255 else np.uint16
    X32 = np.asarray(X, dtype=np.float32)
    out = np.empty(X32.shape, dtype=dtype)
    for f, c in enumerate(cuts):
        col = X32[:, f]
        b = np.searchsorted(np.asarray(c, dtype=np.float32), col, side="right")
        b[np.isnan(col)] = layout.n_bins[f]
        out[:, f] = b
    return out


def feature_ranges(pipeline: FeaturePipeline) -> tuple[tuple[float, float], ...]:
    """The range of every encoded feature (the fine grid's bounds), by the federation's rule
    (`schemas.contracts.stats.feature_ranges`), checked against the pipeline's width."""
    out = shared_feature_ranges(pipeline.contract, pipeline.stats)
    if len(out) != pipeline.n_features:
        raise HistConfigError(
            f"derived {len(out)} feature ranges for {pipeline.n_features} features; the "
            "pipeline and this function disagree on the encoding"
        )
    return out
