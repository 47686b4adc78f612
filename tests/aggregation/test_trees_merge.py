"""Bagging merge and cyclic hand-off for XGBoost and LightGBM, checked against the libraries.

Every merged model must load natively, and the library's own margin must equal both the
service's numpy evaluation and the rule the merge promises: the previous model plus the
example-weighted average of the silos' new functions.
"""

from __future__ import annotations

import itertools

import lightgbm as lgb
import numpy as np
import pytest
import xgboost as xgb
from hypothesis import given, settings
from hypothesis import strategies as st

from aggregation.trees.models import (
    append_cyclic,
    evaluate,
    merge_bagging,
    n_trees,
    predict_margin,
    predict_proba,
)
from aggregation.trees.xgb_model import parse_xgb
from schemas.tree_errors import MergeError
from schemas.tree_params import TreeSpec
from silos.tree_trainer import train_trees

N_FEATURES = 6
KINDS = ("xgboost", "lightgbm")


def _spec(kind: str, mode: str = "bagging", k: int = 2) -> TreeSpec:
    params = {"max_depth": 3, "eta": 0.3} if kind == "xgboost" else {"num_leaves": 7}
    if kind == "lightgbm":
        params.update({"learning_rate": 0.3, "min_data_in_leaf": 5})
    return TreeSpec(kind=kind, mode=mode, n_features=N_FEATURES, trees_per_round=k, params=params)


def _silo_data(seed: int, n: int, shift: float) -> tuple[np.ndarray, np.ndarray]:
    """Non-IID silos: each has its own feature shift; some values missing."""
    rng = np.random.default_rng(seed)
    X = rng.normal(loc=shift, size=(n, N_FEATURES)).astype(np.float32)
    y = (X[:, 0] - 0.7 * X[:, 1] + 0.5 * rng.normal(size=n) > shift).astype(np.float32)
    X[rng.random(n) < 0.1, 2] = np.nan
    return X, y


SILOS = {
    "alpha": _silo_data(1, 300, 0.0),
    "beta": _silo_data(2, 150, 0.5),
    "gamma": (_silo_data(3, 80, -0.4)),
}
X_TEST = _silo_data(9, 400, 0.1)[0]


def _native_margin(kind: str, model: bytes, X: np.ndarray) -> np.ndarray:
    if kind == "xgboost":
        booster = xgb.Booster(model_file=bytearray(model))
        return booster.predict(xgb.DMatrix(X), output_margin=True).astype(np.float64)
    return lgb.Booster(model_str=model.decode()).predict(X, raw_score=True)


def _bagging_round(kind: str, base: bytes | None) -> tuple[bytes, dict[str, tuple[bytes, int]]]:
    spec = _spec(kind)
    updates = {}
    for silo, (X, y) in SILOS.items():
        result = train_trees(spec, base, X, y, seed=3)
        updates[silo] = (result.model, result.n_examples)
    return merge_bagging(kind, base, updates), updates


@pytest.mark.parametrize("kind", KINDS)
def test_bagging_rounds_load_natively_and_match_reference(kind: str) -> None:
    model = None
    for round_num in range(1, 4):
        previous = model
        model, updates = _bagging_round(kind, previous)
        native = _native_margin(kind, model, X_TEST)
        np.testing.assert_allclose(predict_margin(kind, model, X_TEST), native, atol=2e-5)
        assert n_trees(kind, model) == round_num * len(SILOS) * 2
        # The merge rule: F' = F + sum_k n_k/N * g_k.
        total = sum(n for _, n in updates.values())
        expected = (
            np.zeros(len(X_TEST)) if previous is None else _native_margin(kind, previous, X_TEST)
        )
        for silo_model, n in updates.values():
            silo_only = _native_margin(kind, silo_model, X_TEST)
            if previous is not None and kind == "xgboost":
                # an XGBoost slice still carries the base margin; remove it to get g_k alone
                silo_only = silo_only - _base_margin(previous)
            expected = expected + (n / total) * silo_only
        np.testing.assert_allclose(native, expected, atol=5e-5)


def _base_margin(model: bytes) -> float:
    return parse_xgb(model).base_margin


@pytest.mark.parametrize("kind", KINDS)
def test_bagging_improves_on_training_rows(kind: str) -> None:
    X = np.vstack([x for x, _ in SILOS.values()])
    y = np.concatenate([t for _, t in SILOS.values()])
    model, _ = _bagging_round(kind, None)
    first = evaluate(kind, model, X, y)
    for _ in range(3):
        model, _ = _bagging_round(kind, model)
    later = evaluate(kind, model, X, y)
    assert later.loss < first.loss
    assert later.auc is not None and later.auc > 0.8


@pytest.mark.parametrize("kind", KINDS)
def test_merge_does_not_depend_on_arrival_order(kind: str) -> None:
    _, updates = _bagging_round(kind, None)
    outputs = {
        merge_bagging(kind, None, dict(order)) for order in itertools.permutations(updates.items())
    }
    assert len(outputs) == 1


@pytest.mark.parametrize("kind", KINDS)
def test_single_silo_bagging_is_plain_continued_boosting(kind: str) -> None:
    spec = _spec(kind)
    X, y = SILOS["alpha"]
    first = train_trees(spec, None, X, y, seed=1)
    model = merge_bagging(kind, None, {"alpha": (first.model, first.n_examples)})
    second = train_trees(spec, model, X, y, seed=1)
    merged = merge_bagging(kind, model, {"alpha": (second.model, second.n_examples)})
    # weight n/N = 1: the merged model predicts what the silo's own continued booster does
    np.testing.assert_allclose(
        _native_margin(kind, merged, X_TEST), _continued_margin(kind, spec, X, y), atol=2e-5
    )


def _continued_margin(kind: str, spec: TreeSpec, X: np.ndarray, y: np.ndarray) -> np.ndarray:
    params = spec.native_params(seed=1)
    if kind == "xgboost":
        booster = xgb.train(params, xgb.DMatrix(X, label=y), 2)
        booster = xgb.train(params, xgb.DMatrix(X, label=y), 2, xgb_model=booster)
        return booster.predict(xgb.DMatrix(X_TEST), output_margin=True).astype(np.float64)
    booster = lgb.train(params, lgb.Dataset(X, label=y), 2)
    booster = lgb.train(params, lgb.Dataset(X, label=y), 2, init_model=booster)
    return booster.predict(X_TEST, raw_score=True)


@pytest.mark.parametrize("kind", KINDS)
def test_cyclic_hand_off_equals_sequential_training(kind: str) -> None:
    spec = _spec(kind, mode="cyclic")
    model = None
    order = ["gamma", "alpha", "beta"]
    for _round in range(2):
        for silo in order:
            X, y = SILOS[silo]
            result = train_trees(spec, model, X, y, seed=5)
            handed = append_cyclic(kind, model, result.model, silo)
            # the next silo continues from exactly what this silo's library holds
            full = _full_model_margin(kind, spec, model, X, y)
            np.testing.assert_allclose(_native_margin(kind, handed, X_TEST), full, atol=2e-5)
            model = handed
    assert n_trees(kind, model) == 2 * len(order) * 2
    np.testing.assert_allclose(
        predict_margin(kind, model, X_TEST), _native_margin(kind, model, X_TEST), atol=2e-5
    )
    probs = predict_proba(kind, model, X_TEST)
    assert ((probs > 0) & (probs < 1)).all()


def _full_model_margin(kind, spec, base, X, y) -> np.ndarray:
    params = spec.native_params(seed=5)
    if kind == "xgboost":
        start = xgb.Booster(model_file=bytearray(base)) if base is not None else None
        booster = xgb.train(params, xgb.DMatrix(X, label=y), 2, xgb_model=start)
        return booster.predict(xgb.DMatrix(X_TEST), output_margin=True).astype(np.float64)
    start = lgb.Booster(model_str=base.decode()) if base is not None else None
    booster = lgb.train(params, lgb.Dataset(X, label=y), 2, init_model=start)
    return booster.predict(X_TEST, raw_score=True)


def test_lightgbm_single_leaf_trees_merge_and_evaluate() -> None:
    spec = _spec("lightgbm")
    X = np.zeros((40, N_FEATURES), dtype=np.float32)  # nothing to split on
    y = np.r_[np.zeros(30), np.ones(10)].astype(np.float32)
    result = train_trees(spec, None, X, y)
    other = train_trees(spec, None, *SILOS["alpha"])
    merged = merge_bagging(
        "lightgbm", None, {"flat": (result.model, 40), "alpha": (other.model, 300)}
    )
    np.testing.assert_allclose(
        predict_margin("lightgbm", merged, X_TEST),
        _native_margin("lightgbm", merged, X_TEST),
        atol=1e-9,
    )


@pytest.mark.parametrize("kind", KINDS)
def test_merge_refuses_updates_that_disagree(kind: str) -> None:
    base, updates = _bagging_round(kind, None)
    with pytest.raises(MergeError, match="no tree updates"):
        merge_bagging(kind, base, {})
    with pytest.raises(MergeError, match="positive"):
        merge_bagging(kind, None, {"alpha": (updates["alpha"][0], 0)})
    regression = _spec(kind).model_copy(update={"objective": "reg:squarederror"})
    X, y = SILOS["beta"]
    other = train_trees(regression, None, X, y * 3.0)
    with pytest.raises(MergeError, match="objective"):
        merge_bagging(kind, None, {"alpha": updates["alpha"], "beta": (other.model, 150)})


def test_xgboost_merge_refuses_trees_from_another_base_score() -> None:
    base, _ = _bagging_round("xgboost", None)
    X, y = SILOS["alpha"]
    scratch = train_trees(_spec("xgboost"), None, X, y)  # not grown from `base`
    with pytest.raises(MergeError, match="base score"):
        merge_bagging("xgboost", base, {"alpha": (scratch.model, 300)})


@settings(max_examples=25, deadline=None)
@given(
    counts=st.lists(st.integers(min_value=1, max_value=10_000), min_size=2, max_size=2),
    rows=st.integers(min_value=0, max_value=len(X_TEST) - 1),
)
def test_merged_margin_is_weighted_average_for_any_counts(counts: list[int], rows: int) -> None:
    models = {"alpha": _SCRATCH["alpha"], "beta": _SCRATCH["beta"]}
    updates = {s: (m, c) for (s, m), c in zip(models.items(), counts, strict=True)}
    merged = merge_bagging("lightgbm", None, updates)
    x = X_TEST[rows : rows + 1]
    expected = sum(c / sum(counts) * _native_margin("lightgbm", m, x) for m, c in updates.values())
    np.testing.assert_allclose(predict_margin("lightgbm", merged, x), expected, atol=1e-9)


_SCRATCH = {
    silo: train_trees(_spec("lightgbm"), None, *SILOS[silo], seed=2).model
    for silo in ("alpha", "beta")
}
