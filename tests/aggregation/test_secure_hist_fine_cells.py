"""Secure-hist's default fine grid follows the data: a heavy-tailed standardised column gets
enough cells for its quantile bins, range-scaled features keep 4096 (issue 14)."""

from __future__ import annotations

import numpy as np
import pytest

from aggregation.service.hist_setup import run_config
from aggregation.trees.secure_hist.cuts import feature_cuts
from schemas.contracts.loader import load_contract
from schemas.contracts.stats import feature_ranges
from schemas.secure_hist.protocol import (
    AUTO_MAX_CELLS,
    AUTO_MIN_CELLS,
    auto_fine_cells,
    grid_edges,
)
from schemas.specs import RunSpec, SecureAggregationSpec
from schemas.tree_params import TreeSpec
from silos.hist_binning import bin_matrix, fine_grid_counts


def heavy_tailed_column(seed: int = 0) -> tuple[np.ndarray, tuple[float, float]]:
    """Log-normal amounts, range-scaled by a contract bound above the largest one and
    standardised as the pipeline does: most rows near the low end of a range ~70 std wide."""
    rng = np.random.default_rng(seed)
    raw = rng.lognormal(0.0, 1.5, 20_000)
    scaled = raw / (raw.max() * 1.5)
    mean, std = scaled.mean(), scaled.std()
    X = ((scaled - mean) / std).astype(np.float32)[:, None]
    return X, ((0.0 - mean) / std, (1.0 - mean) / std)


def densest_bin_share(X: np.ndarray, span: tuple[float, float], cells: int) -> float:
    """Share of rows in the fullest bin after the federated binning of a single silo."""
    counts = fine_grid_counts(X, [span], cells)[:cells]
    cuts = feature_cuts(counts, grid_edges(span[0], span[1], cells), 256)
    bins = bin_matrix(X, [cuts])[:, 0]
    return float(np.bincount(bins).max() / len(bins))


def test_range_scaled_features_keep_the_floor() -> None:
    assert auto_fine_cells([(0.0, 1.0)] * 30, 256) == AUTO_MIN_CELLS == 4096
    assert auto_fine_cells([], 256) == AUTO_MIN_CELLS
    assert auto_fine_cells([(0.0, 1.0)], 1024) == 4096  # never below max_bin either


@pytest.mark.parametrize(
    ("width", "cells"), [(10.0, 4096), (40.0, 8192), (72.0, 16384), (113.4, 16384), (200.0, 32768)]
)
def test_cells_grow_with_the_widest_range_in_stds(width: float, cells: int) -> None:
    ranges = [(0.0, 1.0), (-0.3, width - 0.3), (-2.0, 3.0)]
    assert auto_fine_cells(ranges, 256) == cells  # max_bin / 2 per std, a power of two


def test_cells_are_capped() -> None:
    assert auto_fine_cells([(0.0, 1e6)], 256) == AUTO_MAX_CELLS


def test_a_heavy_tailed_column_gets_finer_bins_than_the_old_default() -> None:
    X, span = heavy_tailed_column()
    cells = auto_fine_cells([span], 256)
    assert cells == 16384
    old, new = densest_bin_share(X, span, 4096), densest_bin_share(X, span, cells)
    # 4096 cells put a tenth of the rows in one bin (XGBoost's sketch: 1/256 each)
    assert old > 0.08
    assert new < 0.05 and new < old / 2


def _spec(secure_hist: dict[str, object], n_features: int) -> RunSpec:
    trees = TreeSpec.model_validate(
        {"kind": "xgboost", "mode": "secure-hist", "n_features": n_features,
         "params": {"max_depth": 3}, "secure_hist": secure_hist}
    )  # fmt: skip
    return RunSpec(
        federation="f", dataset="heart_disease", trees=trees, rounds=2, min_silos=2,
        secure_aggregation=SecureAggregationSpec(enabled=False),
    )  # fmt: skip


def test_the_service_fills_in_the_grid_unless_the_run_fixes_it() -> None:
    contract = load_contract("heart_disease")  # range-scaled: no statistics round
    width = len(feature_ranges(contract, None))
    assert (
        TreeSpec.model_validate(
            {"kind": "xgboost", "mode": "secure-hist", "n_features": width, "params": {}}
        ).secure_hist.fine_cells
        is None
    )  # type: ignore[union-attr]
    assert run_config(_spec({}, width), None, contract).fine_cells == 4096
    assert run_config(_spec({"fine_cells": 512}, width), None, contract).fine_cells == 512


def test_a_fixed_grid_below_max_bin_is_refused() -> None:
    with pytest.raises(ValueError, match=r"fine_cells \(64\) must be at least params.max_bin"):
        TreeSpec.model_validate(
            {"kind": "xgboost", "mode": "secure-hist", "n_features": 3, "params": {},
             "secure_hist": {"fine_cells": 64}}
        )  # fmt: skip
