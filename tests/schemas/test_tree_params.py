"""Tree hyperparameter schemas: defaults, ranges, unknown parameters, mode rules."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from schemas.tree_params import (
    LightGBMParams,
    TreeSpec,
    TreeSpecError,
    XGBoostParams,
    parse_tree_spec,
)


def test_defaults_and_native_mapping() -> None:
    spec = parse_tree_spec({"kind": "xgboost", "n_features": 4, "params": {"lambda": 2.0}})
    assert isinstance(spec.params, XGBoostParams)
    native = spec.native_params(seed=7, n_threads=2)
    assert native["lambda"] == 2.0 and "reg_lambda" not in native
    assert native["tree_method"] == "hist" and native["objective"] == "binary:logistic"
    assert (native["seed"], native["nthread"]) == (7, 2)

    lgb = parse_tree_spec({"kind": "lightgbm", "n_features": 4, "objective": "reg:squarederror"})
    native = lgb.native_params()
    assert native["objective"] == "regression" and native["linear_tree"] is False
    assert native["num_threads"] == 1 and native["deterministic"] is True


def test_json_round_trip() -> None:
    spec = parse_tree_spec(
        {"kind": "lightgbm", "mode": "cyclic", "n_features": 3, "params": {"num_leaves": 31}}
    )
    again = TreeSpec.model_validate_json(spec.model_dump_json())
    assert again == spec and isinstance(again.params, LightGBMParams)


def test_unknown_parameter_is_named_with_the_allowed_ones() -> None:
    with pytest.raises(TreeSpecError) as err:
        parse_tree_spec({"kind": "xgboost", "n_features": 4, "params": {"max_dept": 3}})
    message = str(err.value)
    assert "unknown XGBoost parameter(s) ['max_dept']" in message
    assert "'max_depth'" in message and "'eta'" in message
    with pytest.raises(TreeSpecError, match=r"unknown LightGBM parameter\(s\) \['eta'\]"):
        parse_tree_spec({"kind": "lightgbm", "n_features": 4, "params": {"eta": 0.1}})


@pytest.mark.parametrize(
    ("kind", "params", "fragment"),
    [
        (
            "xgboost",
            {"max_depth": 17},
            "params.max_depth: Input should be less than or equal to 16",
        ),
        ("xgboost", {"max_depth": 0}, "params.max_depth"),
        ("xgboost", {"eta": 0}, "params.eta: Input should be greater than 0 (got 0)"),
        ("xgboost", {"eta": 1.5}, "params.eta"),
        ("xgboost", {"subsample": 0}, "params.subsample"),
        ("xgboost", {"lambda": -1}, "params.lambda"),
        ("xgboost", {"min_child_weight": -0.1}, "params.min_child_weight"),
        ("lightgbm", {"num_leaves": 1}, "params.num_leaves"),
        ("lightgbm", {"max_depth": 0}, "max_depth must be -1 (unlimited) or 1..16"),
        ("lightgbm", {"learning_rate": 2}, "params.learning_rate"),
        ("lightgbm", {"min_data_in_leaf": 0}, "params.min_data_in_leaf"),
        ("xgboost", {"lambda": float("inf")}, "params.lambda: Input should be a finite number"),
        ("lightgbm", {"lambda_l2": float("nan")}, "params.lambda_l2: Input should be a finite"),
    ],
)
def test_out_of_range_values(kind: str, params: dict, fragment: str) -> None:
    with pytest.raises(TreeSpecError) as err:
        parse_tree_spec({"kind": kind, "n_features": 4, "params": params})
    assert fragment in str(err.value)


def test_trees_per_round_and_features_ranges() -> None:
    with pytest.raises(TreeSpecError, match="trees_per_round"):
        parse_tree_spec({"kind": "xgboost", "n_features": 4, "trees_per_round": 0})
    with pytest.raises(TreeSpecError, match="trees_per_round"):
        parse_tree_spec({"kind": "xgboost", "n_features": 4, "trees_per_round": 101})
    with pytest.raises(TreeSpecError, match="n_features"):
        parse_tree_spec({"kind": "xgboost", "n_features": 0})


def test_collective_is_xgboost_only_and_kind_is_checked() -> None:
    assert parse_tree_spec({"kind": "xgboost", "mode": "collective", "n_features": 2}).mode == (
        "collective"
    )
    with pytest.raises(TreeSpecError, match="LightGBM supports 'bagging' and 'cyclic'"):
        parse_tree_spec({"kind": "lightgbm", "mode": "collective", "n_features": 2})
    with pytest.raises(TreeSpecError, match="kind"):
        parse_tree_spec({"kind": "catboost", "n_features": 2})
    with pytest.raises(TreeSpecError, match="objective"):
        parse_tree_spec({"kind": "xgboost", "n_features": 2, "objective": "multi:softmax"})


def test_params_of_the_other_library_are_refused() -> None:
    with pytest.raises(ValidationError, match="needs XGBoostParams, got LightGBMParams"):
        TreeSpec(kind="xgboost", n_features=2, params=LightGBMParams())


def test_effective_depth_for_policies() -> None:
    assert XGBoostParams(max_depth=6).effective_max_depth() == 6
    assert LightGBMParams(num_leaves=31).effective_max_depth() == 30
    assert LightGBMParams(num_leaves=31, max_depth=5).effective_max_depth() == 5
