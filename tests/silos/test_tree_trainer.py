"""Local boosting at a silo: new trees only, continuation from the global model, errors."""

from __future__ import annotations

import lightgbm as lgb
import numpy as np
import pytest
import xgboost as xgb

from schemas.tree_params import TreeSpec
from schemas.tree_payload import decode_tree_update, sha256_hex
from silos.exceptions import ModelError
from silos.tree_policy import TreePolicy, policy_violation_trees
from silos.tree_trainer import build_update, evaluate_trees, train_trees

N = 4


def _spec(kind: str, k: int = 3, **over) -> TreeSpec:
    params = {"max_depth": 3} if kind == "xgboost" else {"num_leaves": 7, "min_data_in_leaf": 5}
    return TreeSpec(kind=kind, n_features=N, trees_per_round=k, params=params, **over)


def _data(seed: int = 0, n: int = 300) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, N)).astype(np.float32)
    return X, (X[:, 0] + 0.5 * rng.normal(size=n) > 0).astype(np.float32)


def _n_trees(kind: str, model: bytes) -> int:
    if kind == "xgboost":
        return xgb.Booster(model_file=bytearray(model)).num_boosted_rounds()
    return lgb.Booster(model_str=model.decode()).num_trees()


@pytest.mark.parametrize("kind", ["xgboost", "lightgbm"])
def test_returns_only_the_new_trees(kind: str) -> None:
    spec = _spec(kind)
    first = train_trees(spec, None, *_data())
    assert (first.n_base_trees, first.n_new_trees, first.n_examples) == (0, 3, 300)
    assert _n_trees(kind, first.model) == 3
    second = train_trees(spec, first.model, *_data(seed=1))
    assert (second.n_base_trees, second.n_new_trees) == (3, 3)
    assert _n_trees(kind, second.model) == 3  # not 6: the base trees are not resent
    assert second.seconds > 0 and second.library_version


@pytest.mark.parametrize("kind", ["xgboost", "lightgbm"])
def test_same_seed_same_trees(kind: str) -> None:
    spec = _spec(kind)
    assert (
        train_trees(spec, None, *_data(), seed=4).model
        == train_trees(spec, None, *_data(), seed=4).model
    )


@pytest.mark.parametrize("kind", ["xgboost", "lightgbm"])
def test_continuing_improves_local_fit(kind: str) -> None:
    from aggregation.trees.models import append_cyclic

    spec = _spec(kind)
    X, y = _data()
    model = train_trees(spec, None, X, y).model
    before = evaluate_trees(spec, model, X, y)
    model = append_cyclic(kind, model, train_trees(spec, model, X, y).model, "alpha")
    after = evaluate_trees(spec, model, X, y)
    assert after.loss < before.loss and after.n_test == 300
    assert after.auc is not None and after.auc > 0.85


@pytest.mark.parametrize("kind", ["xgboost", "lightgbm"])
def test_bad_inputs_raise_model_error(kind: str) -> None:
    spec = _spec(kind)
    X, y = _data()
    with pytest.raises(ModelError, match=r"expects \(n, 4\)"):
        train_trees(spec, None, X[:, :3], y)
    with pytest.raises(ModelError, match="labels must be 0 or 1"):
        train_trees(spec, None, X, y * 2)
    with pytest.raises(ModelError, match="does not load"):
        train_trees(spec, b"garbage model", X, y)
    five = _spec(kind).model_copy(update={"n_features": 5})
    other = train_trees(five, None, np.hstack([X, X[:, :1]]), y).model
    with pytest.raises(ModelError, match="has 5 features"):
        train_trees(spec, other, X, y)


def test_build_update_binds_the_base_model() -> None:
    spec = _spec("xgboost")
    base = train_trees(spec, None, *_data()).model
    result = train_trees(spec, base, *_data(seed=2))
    payload = build_update(result, spec, run_id="r", round_num=2, silo="alpha", global_model=base)
    header, model = decode_tree_update(payload)
    assert model == result.model
    assert header.base_model_sha256 == sha256_hex(base)
    assert (header.n_base_trees, header.n_new_trees, header.n_examples) == (3, 3, 300)
    assert header.metrics_json is None and header.train_seconds == pytest.approx(result.seconds)


def test_policy_refuses_params_above_its_limits() -> None:
    policy = TreePolicy(max_depth=4, max_trees_per_round=5, max_leaves=32, min_rows_per_leaf=10)
    ok = TreeSpec(kind="xgboost", n_features=N, params={"max_depth": 4}, trees_per_round=5)
    assert policy_violation_trees(policy, ok, "alpha") is None
    deep = ok.model_copy(update={"params": ok.params.model_copy(update={"max_depth": 6})})
    assert "depth at most 4" in policy_violation_trees(policy, deep, "alpha")
    unlimited = TreeSpec(kind="lightgbm", n_features=N, params={"num_leaves": 31})
    assert "parameters allow depth 30" in policy_violation_trees(policy, unlimited, "alpha")
    leafy = TreeSpec(kind="lightgbm", n_features=N, params={"num_leaves": 64, "max_depth": 4})
    assert "at most 32 leaves" in policy_violation_trees(policy, leafy, "alpha")
    many = ok.model_copy(update={"trees_per_round": 6})
    assert "at most 5 trees per round" in policy_violation_trees(policy, many, "alpha")
    small_leaves = TreeSpec(
        kind="lightgbm", n_features=N, params={"num_leaves": 4, "min_data_in_leaf": 2}
    )
    assert "min_data_in_leaf >= 10" in policy_violation_trees(policy, small_leaves, "alpha")


def test_policy_refuses_collective_by_default_and_other_libraries() -> None:
    collective = TreeSpec(kind="xgboost", mode="collective", n_features=N, params={})
    reason = policy_violation_trees(TreePolicy(), collective, "alpha")
    assert "gradient histograms" in reason
    only_xgb = TreePolicy(allowed_kinds=("xgboost",))
    lgb_spec = TreeSpec(kind="lightgbm", n_features=N, params={})
    assert "lightgbm" in policy_violation_trees(only_xgb, lgb_spec, "alpha")
