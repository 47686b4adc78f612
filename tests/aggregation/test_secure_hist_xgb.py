"""Secure-histogram boosting against centralized XGBoost hist on the same cut points.

Sound comparison: XGBoost picks its own cuts, so each feature is replaced by one representative
value per bin of *our* cuts (bin 0 -> below the first cut, bin k -> cuts[k-1], missing stays
NaN). With at most max_bin distinct values per feature XGBoost keeps every distinct value as a
cut (its cut k is the (k+1)-th distinct value), so its bins are exactly ours and its split
condition for "bins <= b left" is cuts[b], our threshold. Both then grow trees from the same
histograms (up to our fixed-point rounding), and must pick the same splits.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import xgboost as xgb
from support.secure_hist_driver import run_secure_hist

from aggregation.trees.models import predict_margin
from schemas.secure_hist.protocol import HistRunConfig
from schemas.tree_params import XGBoostParams
from silos.hist_binning import bin_matrix


def table(objective: str, n: int = 3000, n_features: int = 5, seed: int = 0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, n_features)).astype(np.float32)
    X[rng.random(X.shape) < 0.1] = np.nan
    signal = np.nan_to_num(X[:, 0]) + 0.5 * np.nan_to_num(X[:, 1]) - 0.3 * np.isnan(X[:, 2])
    noise = rng.normal(size=n) * 0.5
    y = (signal + noise > 0).astype(float) if objective == "binary:logistic" else signal + noise
    return X, y


def representatives(X: np.ndarray, cuts: list[np.ndarray]) -> np.ndarray:
    """Each value replaced by its bin's representative under our cuts (NaN kept)."""
    bins = bin_matrix(X, cuts).astype(np.int64)
    out = np.full(X.shape, np.nan, dtype=np.float32)
    for f, c in enumerate(cuts):
        values = np.concatenate([[c[0] - 1.0 if len(c) else 0.0], c]).astype(np.float32)
        present = bins[:, f] < len(c) + 1
        out[present, f] = values[bins[present, f]]
    return out


def structure(tree: dict, node: int = 0) -> tuple:
    """(feature, threshold, default_left, left, right) recursively; leaves as rounded values."""
    if tree["left_children"][node] == -1:
        return ("leaf", round(tree["split_conditions"][node], 4))
    return (
        tree["split_indices"][node],
        tree["split_conditions"][node],
        tree["default_left"][node],
        structure(tree, tree["left_children"][node]),
        structure(tree, tree["right_children"][node]),
    )


def trees_of(model: bytes) -> list[dict]:
    return json.loads(model)["learner"]["gradient_booster"]["model"]["trees"]


@pytest.mark.parametrize("objective", ["binary:logistic", "reg:squarederror"])
def test_same_trees_as_centralized_xgboost(objective: str) -> None:
    X, y = table(objective)
    params = XGBoostParams(max_depth=3, eta=0.3, max_bin=32, min_child_weight=1.0, reg_lambda=1.0)
    bound = 1.0 if objective == "binary:logistic" else 16.0
    ranges = tuple((-4.0, 4.0) for _ in range(X.shape[1]))
    cfg = HistRunConfig(objective, params, 4, ranges, fine_cells=1024, grad_bound=bound)
    data = {f"silo-{i}": (X[i::3], y[i::3]) for i in range(3)}
    report = run_secure_hist(cfg, data)

    pooled_X = np.concatenate([d[0] for d in data.values()])
    pooled_y = np.concatenate([d[1] for d in data.values()])
    native = {**params.native(), "objective": objective, "base_score": report.base_score}
    central = xgb.train(
        {**native, "nthread": 1},
        xgb.DMatrix(representatives(pooled_X, report.cuts), label=pooled_y),
        num_boost_round=4,
    )
    ours, theirs = trees_of(report.model), trees_of(bytes(central.save_raw("json")))
    for i in range(4):
        assert structure(ours[i]) == structure(theirs[i]), f"tree {i} differs"
    # depth-3 trees over 3000 rows: every tree really splits
    assert all(len(t["left_children"]) > 3 for t in ours)


@pytest.mark.parametrize("objective", ["binary:logistic", "reg:squarederror"])
def test_booster_predictions_equal_service_predictions(objective: str) -> None:
    X, y = table(objective, n=1500, seed=1)
    params = XGBoostParams(max_depth=4, eta=0.2, max_bin=64, reg_alpha=0.1, gamma=0.05)
    cfg = HistRunConfig(
        objective, params, 3, tuple((-3.0, 3.0) for _ in range(5)), 512, grad_bound=16.0
    )
    report = run_secure_hist(cfg, {"a": (X[:700], y[:700]), "b": (X[700:], y[700:])})
    booster = xgb.Booster(model_file=bytearray(report.model))
    theirs = booster.predict(xgb.DMatrix(X), output_margin=True)
    np.testing.assert_allclose(predict_margin("xgboost", report.model, X), theirs, atol=1e-5)
