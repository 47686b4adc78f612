"""The demos' second datasets get a model and a verdict that fit their task."""

from __future__ import annotations

from pathlib import Path

import pytest

from flows.baselines import ALL_TEST_SETS
from flows.demo import DemoOptions, demo_spec
from flows.demo_report import _verdict

N_FEATURES = {"diabetes": 10, "delinquency": 28}


@pytest.mark.parametrize(
    ("dataset", "task", "outputs", "objective"),
    [
        ("diabetes", "regression", 1, "reg:squarederror"),
        ("delinquency", "multiclass", 3, "multi:softprob"),
    ],
)
def test_models_follow_the_contract_task(
    tmp_path: Path, dataset: str, task: str, outputs: int, objective: str
) -> None:
    n = N_FEATURES[dataset]
    for model in ("", "logreg", "mlp"):
        spec = demo_spec(DemoOptions(tmp_path, dataset=dataset, model=model), n, 3)
        assert spec.model is not None
        assert (spec.model.task, spec.model.n_outputs, spec.model.n_features) == (task, outputs, n)
    trees = demo_spec(DemoOptions(tmp_path, dataset=dataset, model="xgboost"), n, 3).trees
    assert trees is not None and trees.objective == objective
    assert trees.num_class == (outputs if task == "multiclass" else 0)
    if task == "regression":  # the contract's range of progression scales the target
        assert spec.model is not None and spec.model.target_range == (0.0, 400.0)


def _rows(values: dict[str, float], metric: str) -> list[dict[str, object]]:
    return [{"model": m, "test_set": ALL_TEST_SETS, metric: v} for m, v in values.items()]


def test_regression_verdict_wants_a_lower_rmse(tmp_path: Path) -> None:
    spec = demo_spec(DemoOptions(tmp_path, dataset="diabetes"), 10, 3)
    alone = ["a alone", "b alone"]
    good = {"federated": 57.0, "a alone": 58.5, "b alone": 70.0, "pooled (centralized)": 56.6}
    met, line, figures = _verdict(spec, "regression", _rows(good, "rmse"), alone)
    assert met and figures["best_local_rmse"] == 58.5 and "RMSE" in line
    worse_than_a_silo = dict(good, federated=59.0)
    assert not _verdict(spec, "regression", _rows(worse_than_a_silo, "rmse"), alone)[0]
    far_from_pooled = dict(good, federated=58.0, **{"pooled (centralized)": 50.0})
    assert not _verdict(spec, "regression", _rows(far_from_pooled, "rmse"), alone)[0]


def test_multiclass_verdict_uses_macro_f1(tmp_path: Path) -> None:
    spec = demo_spec(DemoOptions(tmp_path, dataset="delinquency"), 28, 5)
    rows = {"federated": 0.63, "a alone": 0.61, "pooled (centralized)": 0.64}
    met, _, figures = _verdict(spec, "multiclass", _rows(rows, "f1_macro"), ["a alone"])
    assert met and figures["federated_f1_macro"] == 0.63
    rows["pooled (centralized)"] = 0.66  # 0.03 below pooled: outside 0.02
    assert not _verdict(spec, "multiclass", _rows(rows, "f1_macro"), ["a alone"])[0]
