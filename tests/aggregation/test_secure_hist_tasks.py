"""Secure-hist for multiclass (softmax gradients, K trees per round) and regression.

Same sound comparison as `test_secure_hist_xgb`: every feature is replaced by one
representative value per bin of our cuts, so centralised XGBoost hist has exactly our bins and
must grow the same trees from the same (pooled) rows, with the same base score.
"""

from __future__ import annotations

import numpy as np
import pytest
import xgboost as xgb
from support.secure_hist_driver import run_secure_hist
from test_secure_hist_xgb import representatives, structure, trees_of

from aggregation.trees.models import evaluate, predict, predict_margin
from schemas.objectives import multiclass_intercept
from schemas.secure_hist.errors import HistConfigError
from schemas.secure_hist.protocol import HistRunConfig
from schemas.task_metrics import score
from schemas.tree_params import XGBoostParams

K = 3


def multiclass_table(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 4)).astype(np.float32)
    X[rng.random(X.shape) < 0.05] = np.nan
    z = np.nan_to_num(X[:, 0]) + 0.3 * rng.normal(size=n)
    y = np.digitize(z, [-0.5, 0.6]).astype(float)  # classes 0, 1, 2
    y[np.nan_to_num(X[:, 1]) > 1.2] = 2.0
    return X, y


def regression_table(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A target far from 0 (100..130): labels and early gradients exceed 1 by far."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 4)).astype(np.float32)
    y = 115 + 4 * np.tanh(X[:, 0]) + 2 * (X[:, 1] > 0) + rng.normal(size=n)
    return X, np.clip(y, 100, 130)


def _central(params: XGBoostParams, report, objective: str, X, y, rounds: int, **extra):
    native = {**params.native(), "objective": objective, "base_score": report.base_score}
    return xgb.train(
        {**native, **extra, "nthread": 1},
        xgb.DMatrix(representatives(X, report.cuts), label=y),
        num_boost_round=rounds,
    )


def test_multiclass_equals_centralised_xgboost_softprob() -> None:
    X, y = multiclass_table(2400, seed=0)
    params = XGBoostParams(max_depth=3, eta=0.3, max_bin=32)
    ranges = tuple((-4.0, 4.0) for _ in range(4))
    rounds = 3
    cfg = HistRunConfig("multi:softprob", params, rounds * K, ranges, 1024, num_class=K)
    data = {f"silo-{i}": (X[i::3], y[i::3]) for i in range(3)}
    report = run_secure_hist(cfg, data)

    pooled_X = np.concatenate([d[0] for d in data.values()])
    pooled_y = np.concatenate([d[1] for d in data.values()])
    # the base margins are XGBoost's own multiclass intercept of the pooled labels
    np.testing.assert_allclose(
        report.base_score, multiclass_intercept(np.bincount(pooled_y.astype(int))), atol=1e-9
    )
    central = _central(params, report, "multi:softprob", pooled_X, pooled_y, rounds, num_class=K)
    ours, theirs = trees_of(report.model), trees_of(bytes(central.save_raw("json")))
    assert len(ours) == len(theirs) == rounds * K
    for i in range(rounds * K):
        assert structure(ours[i]) == structure(theirs[i]), f"tree {i} (class {i % K}) differs"
    assert all(len(t["left_children"]) > 3 for t in ours)  # every tree really splits

    # the export loads in XGBoost and predicts what the service's numpy walk predicts
    X_test, y_test = multiclass_table(800, seed=9)
    booster = xgb.Booster(model_file=bytearray(report.model))
    probs = booster.predict(xgb.DMatrix(X_test))
    assert probs.shape == (800, K)
    np.testing.assert_allclose(predict("xgboost", report.model, X_test), probs, atol=1e-5)
    np.testing.assert_allclose(
        predict_margin("xgboost", report.model, X_test),
        booster.predict(xgb.DMatrix(X_test), output_margin=True),
        atol=1e-5,
    )
    # and beats the majority class on held-out rows
    metrics = evaluate("xgboost", report.model, X_test, y_test)
    majority = np.bincount(pooled_y.astype(int)).argmax()
    assert metrics.accuracy is not None and metrics.f1_macro is not None
    assert metrics.accuracy > np.mean(y_test == majority) + 0.1
    assert metrics.f1_macro > 0.6


def test_regression_far_from_zero_equals_centralised_xgboost() -> None:
    X, y = regression_table(2400, seed=1)
    params = XGBoostParams(max_depth=3, eta=0.3, max_bin=32)
    ranges = tuple((-4.0, 4.0) for _ in range(4))
    # the bound the service derives from a target range [100, 130] (hist_setup)
    bound = max(1.0, 100.0, 130.0, 2 * 30.0)
    cfg = HistRunConfig(
        "reg:squarederror", params, 4, ranges, 1024, grad_bound=bound, max_rows=2**20
    )
    data = {f"silo-{i}": (X[i::3], y[i::3]) for i in range(3)}
    report = run_secure_hist(cfg, data)
    pooled_X = np.concatenate([d[0] for d in data.values()])
    pooled_y = np.concatenate([d[1] for d in data.values()])
    assert report.base_score == pytest.approx(pooled_y.mean(), abs=1e-4)
    central = _central(params, report, "reg:squarederror", pooled_X, pooled_y, 4)
    ours, theirs = trees_of(report.model), trees_of(bytes(central.save_raw("json")))
    for i in range(4):
        assert structure(ours[i]) == structure(theirs[i]), f"tree {i} differs"

    X_test, y_test = regression_table(800, seed=8)
    booster = xgb.Booster(model_file=bytearray(report.model))
    pred = booster.predict(xgb.DMatrix(X_test))
    np.testing.assert_allclose(predict("xgboost", report.model, X_test), pred, atol=1e-4)
    ours_m = score("regression", y_test, pred)
    trivial = score("regression", y_test, np.full(len(y_test), pooled_y.mean()))
    assert ours_m["rmse"] is not None and trivial["rmse"] is not None
    assert ours_m["rmse"] < 0.8 * trivial["rmse"]


def test_multiclass_config_needs_its_classes() -> None:
    params = XGBoostParams(max_bin=16)
    with pytest.raises(HistConfigError, match="num_class >= 2"):
        HistRunConfig("multi:softprob", params, 3, ((0.0, 1.0),), 64)
    with pytest.raises(HistConfigError, match="num_class 3"):
        HistRunConfig("binary:logistic", params, 3, ((0.0, 1.0),), 64, num_class=3)
    # setup vector: per feature fine cells + missing, rows, then K class counts
    cfg = HistRunConfig("multi:softprob", params, 3, ((0.0, 1.0),), 64, num_class=4)
    assert cfg.setup_length() == 65 + 1 + 4


def test_service_config_follows_the_contract_task() -> None:
    from aggregation.service.exceptions import InvalidPayload
    from aggregation.service.hist_setup import regression_bound, run_config
    from schemas.contracts.loader import load_contract
    from schemas.specs import RunSpec, SecureAggregationSpec
    from schemas.tree_params import TreeSpec, task_fields

    contract = load_contract("diabetes_progression")
    n_features = 10

    def spec(task: str) -> RunSpec:
        trees = TreeSpec.model_validate(
            {"kind": "xgboost", "mode": "secure-hist", "n_features": n_features,
             "params": {"max_bin": 16}, "secure_hist": {"fine_cells": 64},
             **task_fields(task, 3)}
        )  # fmt: skip
        return RunSpec(
            federation="f", dataset=contract.name, trees=trees, rounds=2, min_silos=2,
            secure_aggregation=SecureAggregationSpec(enabled=False),
        )  # fmt: skip

    config = run_config(spec("regression"), None, contract)
    # progression's range [0, 400]: labels reach 400, early gradients up to the range's width
    assert regression_bound(contract) == 800.0 == config.grad_bound
    assert config.objective == "reg:squarederror" and config.n_trees == 2
    with pytest.raises(InvalidPayload, match="declares task 'regression'.*reg:squarederror"):
        run_config(spec("multiclass"), None, contract)
    assert regression_bound(load_contract("heart_disease")) == 0.0  # binary: the spec's bound
