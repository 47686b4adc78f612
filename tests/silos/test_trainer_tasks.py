"""Every tabular task for the PyTorch models: labels from the contract, the output layer, the
loss, and metrics by task. Each (task, model) pair trains on a small synthetic table encoded by
the real feature pipeline and must beat the trivial predictor on held-out rows."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from schemas.contracts.loader import Contract, load_contract_text
from schemas.specs import ModelSpec, RunSpec, TrainingSpec, model_spec_for_contract, param_shapes
from schemas.task_metrics import score
from silos.config import SiloConfig
from silos.data import split_train_test, target_labels
from silos.exceptions import DataError, ModelError
from silos.features import FeaturePipeline
from silos.policy import policy_violation
from silos.torch_model import build_model, get_params
from silos.trainer import evaluate, predict, train_local

CLASSES = ("low", "mid", "high")

TARGETS = {
    "binary": """
[target]
column = "y"
task = "binary"
positive_if = { op = "==", value = 1 }

[[columns]]
name = "y"
type = "numeric"
range = [0, 1]
""",
    "multiclass": """
[target]
column = "y"
task = "multiclass"
values = ["low", "mid", "high"]

[[columns]]
name = "y"
type = "categorical"
categories = ["low", "mid", "high"]
""",
    "regression": """
[target]
column = "y"
task = "regression"

[[columns]]
name = "y"
type = "numeric"
unit = "mg/dl"
range = [0, 400]
""",
}


def contract(task: str) -> Contract:
    text = f"""
name = "synthetic_{task}"
version = "1.0.0"
min_rows = 10
features = ["x1", "x2", "site"]
{TARGETS[task]}
[[columns]]
name = "x1"
type = "numeric"
range = [-4, 4]

[[columns]]
name = "x2"
type = "numeric"
range = [-4, 4]

[[columns]]
name = "site"
type = "categorical"
categories = ["north", "south"]
"""
    return load_contract_text(text, source=f"synthetic_{task}.toml")


def table(task: str, n: int = 900, seed: int = 0) -> pd.DataFrame:
    """Rows whose target depends on the features (plus noise) as the task says."""
    rng = np.random.default_rng(seed)
    x1, x2 = rng.normal(0, 1.2, n).clip(-4, 4), rng.normal(0, 1.2, n).clip(-4, 4)
    site = rng.choice(["north", "south"], n)
    shift = np.where(site == "south", 0.7, 0.0)
    if task == "binary":
        y: object = (x1 - x2 + shift + rng.normal(0, 0.5, n) > 0).astype(int)
    elif task == "multiclass":
        z = x1 + 0.5 * x2 + shift + rng.normal(0, 0.4, n)
        y = np.array(CLASSES)[np.digitize(z, [-0.8, 0.8])]
    else:  # a non-linear part too, so the MLP has something to add
        y = (150 + 45 * x1 - 25 * x2 + 30 * shift + 10 * x1**2 + rng.normal(0, 12, n)).clip(0, 400)
    return pd.DataFrame({"x1": x1, "x2": x2, "site": site, "y": y})


def trivial(task: str, y_train: np.ndarray, n_test: int, k: int) -> np.ndarray:
    """The best constant predictor learnt from the training labels."""
    if task == "binary":
        return np.full(n_test, float(y_train.mean()))
    if task == "multiclass":
        shares = np.bincount(y_train.astype(int), minlength=k) / len(y_train)
        return np.tile(shares, (n_test, 1))
    return np.full(n_test, float(y_train.mean()))


@pytest.mark.parametrize("kind", ["logreg", "mlp"])
@pytest.mark.parametrize("task", ["binary", "multiclass", "regression"])
def test_each_task_and_model_beats_the_trivial_predictor(task: str, kind: str) -> None:
    c = contract(task)
    train, test = split_train_test(table(task), c, test_fraction=0.3, seed=1)
    pipeline = FeaturePipeline.from_contract(c)
    X_train, y_train = pipeline.transform(train)
    X_test, y_test = pipeline.transform(test)
    spec = model_spec_for_contract(kind, pipeline.n_features, c, (16,) if kind == "mlp" else ())  # type: ignore[arg-type]
    assert spec.task == task and spec.n_outputs == (3 if task == "multiclass" else 1)
    last = 0 if kind == "logreg" else 1
    assert param_shapes(spec)[-1] == (f"layers.{last}.bias", (spec.n_outputs,))
    start = get_params(build_model(spec))
    # one learning rate for every task: the regression target is learnt range-scaled
    training = TrainingSpec(local_epochs=40, lr=0.3, seed=3)
    trained = train_local(spec, start, X_train, y_train, training)
    assert np.isfinite(trained.loss) and trained.n_examples == len(y_train)

    metrics = evaluate(spec, trained.params, X_test, y_test)
    baseline = score(task, y_test, trivial(task, y_train, len(y_test), spec.n_outputs))
    assert metrics.n_test == len(y_test)
    if task == "binary":
        assert metrics.f1_macro is None and metrics.rmse is None
        assert metrics.accuracy is not None and metrics.auc is not None
        assert metrics.accuracy > (baseline["accuracy"] or 0) + 0.15
        assert metrics.auc > 0.85 and metrics.loss < (baseline["loss"] or 0)
    elif task == "multiclass":
        assert metrics.auc is None and metrics.rmse is None
        assert metrics.f1_macro is not None and metrics.accuracy is not None
        assert metrics.f1_macro > (baseline["f1_macro"] or 0) + 0.3
        assert metrics.accuracy > (baseline["accuracy"] or 0) + 0.15
        assert metrics.loss < (baseline["loss"] or 0)
    else:
        assert metrics.accuracy is None and metrics.auc is None
        assert metrics.rmse is not None and metrics.r2 is not None and metrics.mae is not None
        # metrics are in the target's units (mg/dl), not the scaled ones the model learns
        assert metrics.rmse < 0.5 * (baseline["rmse"] or 0)
        assert metrics.r2 > 0.75 and metrics.mae < (baseline["mae"] or 0)
        assert metrics.loss == pytest.approx(metrics.rmse**2)


def test_multiclass_labels_are_class_indices_and_an_unlisted_class_is_named() -> None:
    c = contract("multiclass")
    df = pd.DataFrame({"y": ["high", "low", "mid", "low"]})
    assert target_labels(df, c).tolist() == [2, 0, 1, 0]
    bad = pd.DataFrame({"y": ["high", "extreme", "low"]})
    with pytest.raises(DataError, match=r"site_a\.csv.*'y'.*extreme.*\['low', 'mid', 'high'\]"):
        target_labels(bad, c, source="site_a.csv")


def test_regression_labels_are_the_values_and_text_is_refused() -> None:
    c = contract("regression")
    assert target_labels(pd.DataFrame({"y": [1.5, 300]}), c).tolist() == [1.5, 300.0]
    with pytest.raises(DataError, match=r"test\.csv: regression target 'y'.*'n/a'"):
        target_labels(pd.DataFrame({"y": [1.0, "n/a"]}), c, source="test.csv")


def test_a_regression_split_is_not_stratified_and_a_rare_class_is_named() -> None:
    train, test = split_train_test(table("regression", n=40), contract("regression"), 0.25, 0)
    assert (len(train), len(test)) == (30, 10)
    rare = table("multiclass", n=60)
    rare["y"] = rare["y"].replace("high", "mid")
    rare.loc[rare.index[0], "y"] = "high"  # one row of class "high": too few to stratify
    with pytest.raises(DataError, match=r"rows per class of 'y' are .*high: 1"):
        split_train_test(rare, contract("multiclass"), 0.25, 0)


def test_predictions_have_the_task_shape_and_labels_are_checked() -> None:
    spec = ModelSpec(kind="logreg", n_features=3, task="multiclass", n_outputs=4)
    params = get_params(build_model(spec))
    X = np.zeros((5, 3), np.float32)
    probs = predict(spec, params, X)
    assert probs.shape == (5, 4) and np.allclose(probs.sum(axis=1), 1.0)
    with pytest.raises(ModelError, match="class indices 0..3"):
        evaluate(spec, params, X, np.array([0, 1, 2, 3, 4], np.float32))
    reg = ModelSpec(kind="logreg", n_features=3, task="regression", target_range=(100.0, 300.0))
    zero = [np.zeros_like(p) for p in get_params(build_model(reg))]
    # an all-zero model predicts the bottom of the range: outputs are mapped back to units
    assert predict(reg, zero, X).tolist() == [100.0] * 5


def test_fedprox_trains_every_task() -> None:
    for task in ("multiclass", "regression"):
        c = contract(task)
        pipeline = FeaturePipeline.from_contract(c)
        X, y = pipeline.transform(table(task, n=120))
        spec = model_spec_for_contract("mlp", pipeline.n_features, c, (8,))
        start = get_params(build_model(spec))
        free = train_local(spec, start, X, y, TrainingSpec(local_epochs=5))
        prox = train_local(spec, start, X, y, TrainingSpec(local_epochs=5), mu=5.0)
        assert drift(prox.params, start) < drift(free.params, start)


def drift(params: list[np.ndarray], start: list[np.ndarray]) -> float:
    return float(sum(((p - s) ** 2).sum() for p, s in zip(params, start, strict=True)))


def test_spec_checks_outputs_against_task_and_the_silo_refuses_another_task() -> None:
    with pytest.raises(ValueError, match="n_outputs = the number of classes"):
        ModelSpec(kind="logreg", n_features=3, task="multiclass")
    with pytest.raises(ValueError, match="a binary model has one output"):
        ModelSpec(kind="logreg", n_features=3, n_outputs=3)
    with pytest.raises(ValueError, match="target_range scales a regression target only"):
        ModelSpec(kind="logreg", n_features=3, target_range=(0.0, 1.0))
    config = SiloConfig.model_validate(
        {
            "silo": {"name": "s1", "federation": "f"},
            "data": {"path": "x.csv", "contract": "synthetic_multiclass"},
            "service": {"urls": ["http://127.0.0.1:1"]},
        }
    )
    spec = RunSpec(
        federation="f",
        dataset="synthetic_multiclass",
        model=ModelSpec(kind="logreg", n_features=5),
    )
    reason = policy_violation(config, spec, 5, "multiclass")
    assert reason is not None and "binary task" in reason and "is multiclass" in reason
    assert policy_violation(config, spec, 5, "binary") is None
