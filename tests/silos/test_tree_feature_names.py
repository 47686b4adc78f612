"""Tree models carry the contract's encoded feature names, in the pipeline's order.

Two silos grow trees through `silos.tree_round.grow` (as the agent does) and the service's own
validation and merge combine them, over two rounds (so the second boosts from a named global
model). Plain XGBoost then refuses a DataFrame whose columns are reordered or misnamed, and so
does LightGBM when asked to (``validate_features=True``; LightGBM writes spaces as ``_``).
"""

from __future__ import annotations

from typing import Any

import lightgbm as lgb
import numpy as np
import pandas as pd
import pytest
import xgboost as xgb

from aggregation.trees.models import append_cyclic, merge_bagging
from aggregation.trees.validate import validate_tree_update
from schemas.contracts.loader import load_contract
from schemas.specs import RunSpec, SecureAggregationSpec
from schemas.tasks import TreeTaskInfo, TreeTrainTask
from schemas.tree_errors import MergeError
from schemas.tree_params import TreeSpec
from schemas.tree_payload import sha256_hex
from silos import tree_round
from silos.exceptions import ModelError
from silos.features import FeaturePipeline
from silos.local_data import LocalData
from silos.tree_trainer import name_features, predict_trees, train_trees

CONTRACT = load_contract("heart_disease")
NAMES = FeaturePipeline.from_contract(CONTRACT).feature_names
N = len(NAMES)
SILOS = ("a", "b")


def spec_for(kind: str, mode: str) -> TreeSpec:
    params = {"max_depth": 3} if kind == "xgboost" else {"num_leaves": 7, "min_data_in_leaf": 5}
    raw = {"kind": kind, "mode": mode, "n_features": N, "trees_per_round": 2, "params": params}
    return TreeSpec.model_validate(raw)


def rows(seed: int, n: int = 300) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    X = rng.uniform(0, 1, size=(n, N)).astype(np.float32)
    y = (X[:, 0] + 0.5 * X[:, 3] + 0.3 * rng.normal(size=n) > 0.75).astype(np.float32)
    return X, y


class _Client:
    """What `tree_round.grow` uses of the silo's client: its name and the base model."""

    def __init__(self, silo: str, base: bytes | None) -> None:
        self.silo, self._base = silo, base

    def tree_base(self, run_id: str, round_num: int) -> bytes | None:
        return self._base


def grow(spec: TreeSpec, silo: str, round_num: int, base: bytes | None, seed: int) -> bytes:
    run = RunSpec(
        federation="f",
        dataset="heart_disease",
        trees=spec,
        rounds=2,
        min_silos=2,
        secure_aggregation=SecureAggregationSpec(enabled=False),
    )
    info = TreeTaskInfo(seal_key="00" * 32, base_model_sha256=sha256_hex(base) if base else None)
    task = TreeTrainTask(run_id="run", round=round_num, spec=run, trees=info)
    X, y = rows(seed)
    data = LocalData(X, y, X[:50], y[:50], n_features=N, imputed={}, data_sha256="0" * 64)
    client: Any = _Client(silo, base)
    envelope, _, _ = tree_round.grow(client, task, data, config=None)  # type: ignore[arg-type]
    return envelope


def federate(spec: TreeSpec) -> bytes:
    model: bytes | None = None
    for r in (1, 2):
        start, updates = model, {}
        for i, silo in enumerate(SILOS):
            base = model if spec.mode == "cyclic" else start
            envelope = grow(spec, silo, r, base, seed=10 * r + i)
            accepted = validate_tree_update(
                envelope, silo=silo, run_id="run", round_num=r, spec=spec, global_model=base
            )
            if spec.mode == "cyclic":
                model = append_cyclic(spec.kind, base, accepted.model, silo)
            else:
                updates[silo] = (accepted.model, accepted.n_examples)
        if spec.mode == "bagging":
            model = merge_bagging(spec.kind, start, updates)
    assert model is not None
    return model


@pytest.fixture(autouse=True)
def _contract(monkeypatch: pytest.MonkeyPatch) -> None:
    # the silo's accepted contract, without a silo workspace
    monkeypatch.setattr(tree_round, "contract_for", lambda config: CONTRACT)


@pytest.mark.parametrize("mode", ["bagging", "cyclic"])
@pytest.mark.parametrize("kind", ["xgboost", "lightgbm"])
def test_the_global_model_names_its_features_and_refuses_reordered_columns(
    kind: str, mode: str
) -> None:
    spec = spec_for(kind, mode)
    model = federate(spec)
    X, _ = rows(99, 100)
    ours = predict_trees(spec, model, X)
    if kind == "xgboost":
        booster = xgb.Booster(model_file=bytearray(model))
        assert booster.feature_names == list(NAMES)
        frame = pd.DataFrame(X, columns=list(NAMES))
        np.testing.assert_allclose(booster.predict(xgb.DMatrix(frame)), ours, rtol=1e-6)
        with pytest.raises(ValueError, match="feature_names mismatch"):
            booster.predict(xgb.DMatrix(frame[frame.columns[::-1]]))
        with pytest.raises(ValueError, match="feature_names mismatch"):
            booster.predict(xgb.DMatrix(frame.rename(columns={NAMES[0]: "other"})))
    else:
        lgb_booster = lgb.Booster(model_str=model.decode())
        names = [n.replace(" ", "_") for n in NAMES]
        assert lgb_booster.feature_name() == names and names != list(NAMES)  # spaces present
        frame = pd.DataFrame(X, columns=names)
        theirs = lgb_booster.predict(frame, validate_features=True)
        np.testing.assert_allclose(theirs, ours, rtol=1e-6)
        with pytest.raises(lgb.basic.LightGBMError):
            lgb_booster.predict(frame[frame.columns[::-1]], validate_features=True)


@pytest.mark.parametrize("kind", ["xgboost", "lightgbm"])
def test_trees_named_otherwise_are_not_merged(kind: str) -> None:
    # names agree across silos because all use the contract; one that does not is refused
    spec = spec_for(kind, "bagging")
    updates = {}
    for i, (silo, names) in enumerate([("a", NAMES), ("b", NAMES[::-1])]):
        result = train_trees(spec, None, *rows(i), seed=0)
        updates[silo] = (name_features(spec, result.model, names), result.n_examples)
    with pytest.raises(MergeError, match="other feature names"):
        merge_bagging(spec.kind, None, updates)


def test_names_must_be_one_per_feature() -> None:
    spec = spec_for("xgboost", "bagging")
    result = train_trees(spec, None, *rows(0), seed=0)
    with pytest.raises(ModelError, match="feature names for a model of"):
        name_features(spec, result.model, NAMES[:-1])
