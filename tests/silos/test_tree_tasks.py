"""Bagging and cyclic trees for every task: binary, multiclass (K trees per round), regression.

Three silos grow trees with the real libraries (`silos.tree_trainer`), the service validates
and merges them (`aggregation.trees`); the global model must load in its library, predict what
the service's own tree walk predicts, and beat a trivial predictor on held-out rows.
"""

from __future__ import annotations

import lightgbm as lgb
import numpy as np
import pytest
import xgboost as xgb

from aggregation.trees.models import append_cyclic, merge_bagging, n_rounds, predict
from aggregation.trees.validate import validate_tree_update
from schemas.task_metrics import score
from schemas.tree_errors import MergeError, TreeModelFormatError
from schemas.tree_params import TreeKind, TreeSpec, TreeSpecError, check_task, task_fields
from silos.exceptions import ModelError
from silos.tree_trainer import build_update, evaluate_trees, predict_trees, train_trees

K = 3
SILOS = ("a", "b", "c")


def table(task: str, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 5)).astype(np.float32)
    z = X[:, 0] + 0.5 * X[:, 1] + 0.4 * rng.normal(size=n)
    if task == "binary":
        return X, (z > 0).astype(float)
    if task == "multiclass":
        return X, np.digitize(z, [-0.6, 0.6]).astype(float)
    return X, 50 + 10 * z  # regression, far from zero


def spec_for(task: str, kind: str, mode: str) -> TreeSpec:
    params = {"max_depth": 3, "eta": 0.3} if kind == "xgboost" else {"num_leaves": 8}
    if kind == "lightgbm":
        params |= {"learning_rate": 0.3, "min_data_in_leaf": 5}
    raw = {"kind": kind, "mode": mode, "n_features": 5, "trees_per_round": 2, "params": params}
    return TreeSpec.model_validate({**raw, **task_fields(task, K)})


def federate(spec: TreeSpec, rounds: int = 3) -> bytes:
    data = {s: table(spec.task, 400, seed=i) for i, s in enumerate(SILOS)}
    model: bytes | None = None
    for r in range(1, rounds + 1):
        start = model
        updates: dict[str, tuple[bytes, int]] = {}
        for silo in SILOS:
            base = model if spec.mode == "cyclic" else start
            X, y = data[silo]
            result = train_trees(spec, base, X, y, seed=r)
            payload = build_update(
                result, spec, run_id="run", round_num=r, silo=silo, global_model=base
            )
            accepted = validate_tree_update(
                payload, silo=silo, run_id="run", round_num=r, spec=spec, global_model=base
            )
            if spec.mode == "cyclic":
                model = append_cyclic(spec.kind, base, accepted.model, silo)
            else:
                updates[silo] = (accepted.model, accepted.n_examples)
        if spec.mode == "bagging":
            model = merge_bagging(spec.kind, start, updates)
    assert model is not None
    return model


def library_predict(kind: str, model: bytes, X: np.ndarray) -> np.ndarray:
    if kind == "xgboost":
        return xgb.Booster(model_file=bytearray(model)).predict(xgb.DMatrix(X))
    return np.asarray(lgb.Booster(model_str=model.decode()).predict(X))


@pytest.mark.parametrize("mode", ["bagging", "cyclic"])
@pytest.mark.parametrize("kind", ["xgboost", "lightgbm"])
@pytest.mark.parametrize("task", ["binary", "multiclass", "regression"])
def test_federated_trees_for_every_task(task: str, kind: TreeKind, mode: str) -> None:
    spec = spec_for(task, kind, mode)
    model = federate(spec)
    # 3 rounds x 3 silos x 2 rounds of trees (cyclic appends, bagging appends every silo)
    assert n_rounds(kind, model) == 18

    X_test, y_test = table(task, 600, seed=99)
    theirs = library_predict(kind, model, X_test)
    expected_shape = (600, K) if task == "multiclass" else (600,)
    assert theirs.shape == expected_shape
    # XGBoost sums leaves in float32: relative 1e-6 for values near 50
    np.testing.assert_allclose(predict(kind, model, X_test), theirs, rtol=1e-6, atol=1e-5)
    np.testing.assert_allclose(predict_trees(spec, model, X_test), theirs, atol=1e-6)

    metrics = evaluate_trees(spec, model, X_test, y_test)
    _, y_train = table(task, 400, seed=0)
    if task == "binary":
        assert metrics.auc is not None and metrics.auc > 0.85
        trivial = score(task, y_test, np.full(600, y_train.mean()))
        assert metrics.loss < trivial["loss"]  # type: ignore[operator]
    elif task == "multiclass":
        assert metrics.f1_macro is not None and metrics.accuracy is not None
        majority = np.bincount(y_train.astype(int)).argmax()
        assert metrics.accuracy > np.mean(y_test == majority) + 0.15
        assert metrics.f1_macro > 0.6
    else:
        trivial = score(task, y_test, np.full(600, y_train.mean()))
        assert metrics.rmse is not None and metrics.r2 is not None
        assert metrics.rmse < 0.7 * trivial["rmse"]  # type: ignore[operator]
        assert metrics.r2 > 0.5


def test_spec_fits_the_contract_task() -> None:
    spec = spec_for("multiclass", "xgboost", "bagging")
    assert spec.native_params()["num_class"] == K and spec.n_outputs == K
    check_task(spec, "multiclass", K)
    with pytest.raises(TreeSpecError, match="use objective reg:squarederror"):
        check_task(spec, "regression", 0, "houses")
    with pytest.raises(TreeSpecError, match="lists 4 classes"):
        check_task(spec, "multiclass", 4)
    with pytest.raises(ValueError, match="num_class >= 2"):
        TreeSpec.model_validate(
            {"kind": "lightgbm", "objective": "multi:softprob", "n_features": 2, "params": {}}
        )
    assert spec_for("regression", "lightgbm", "cyclic").native_params()["objective"] == (
        "regression"
    )


def test_labels_and_updates_that_do_not_fit_are_refused() -> None:
    spec = spec_for("multiclass", "xgboost", "bagging")
    X, y = table("multiclass", 100, seed=1)
    with pytest.raises(ModelError, match=r"class indices 0\.\.2"):
        train_trees(spec, None, X, np.where(y == 2, 5.0, y))
    # a binary update offered to a multiclass run is refused naming both objectives
    binary = spec_for("binary", "xgboost", "bagging")
    result = train_trees(binary, None, *table("binary", 100, seed=1))
    payload = build_update(result, binary, run_id="r", round_num=1, silo="a", global_model=None)
    with pytest.raises(TreeModelFormatError, match="binary:logistic.*multi:softprob"):
        validate_tree_update(
            payload, silo="a", run_id="r", round_num=1, spec=spec, global_model=None
        )
    # and a merge refuses models with another class count
    four = TreeSpec.model_validate({**spec.model_dump(by_alias=True), "num_class": 4})
    X4 = np.concatenate([X, X[:4]])
    y4 = np.concatenate([y, [3.0, 3.0, 3.0, 3.0]])
    other = train_trees(four, None, X4, y4).model
    mine = train_trees(spec, None, X, y).model
    with pytest.raises(MergeError, match="4 classes"):
        merge_bagging("xgboost", None, {"a": (mine, 100), "b": (other, 104)})
