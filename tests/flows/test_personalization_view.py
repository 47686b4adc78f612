"""The per-silo personalization rows and table, and `fedsilo demo --personalize`'s spec."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
from rich.console import Console

from flows.demo import DemoOptions, demo_spec, flow_parameters
from flows.exceptions import DemoError
from flows.personalization_view import (
    personalization_rows,
    personalization_table,
    personalized_statements,
)
from schemas.personalization import PersonalizedPayload
from schemas.wire import Metrics

N_FEATURES = 13


def _statement(silo: str, g: float, p: float, alone: float) -> SimpleNamespace:
    def m(auc: float) -> Metrics:
        return Metrics(n_test=30, loss=0.5, accuracy=0.8, auc=auc)

    payload = PersonalizedPayload(
        silo=silo, round=3, model_version=2, method="ditto", model_sha256="ab" * 32, steps=4,
        n_fit=60, n_val=20, global_metrics=m(g), personalized=m(p), local_only=m(alone),
    )  # fmt: skip
    return SimpleNamespace(kind="personalized", payload=payload.model_dump_json())


def test_rows_flag_a_silo_the_federation_serves_worse_than_training_alone() -> None:
    entries = [
        SimpleNamespace(kind="aggregate", payload="{}"),
        _statement("zurich", 0.45, 0.50, 0.60),  # first statement, replaced below
        _statement("bern", 0.90, 0.92, 0.85),
        _statement("zurich", 0.45, 0.62, 0.60),
    ]
    statements = personalized_statements(entries)  # type: ignore[arg-type]
    assert list(statements) == ["bern", "zurich"]
    rows = {r["silo"]: r for r in personalization_rows(statements, "binary")}
    assert rows["zurich"]["metric"] == "auc" and rows["zurich"]["personalized"] == 0.62
    assert rows["zurich"]["federation_worse"] is True
    assert rows["bern"]["federation_worse"] is False
    assert rows["zurich"]["personalized_best"] is True and rows["bern"]["personalized_best"]
    worse = personalization_rows(
        personalized_statements([_statement("x", 0.9, 0.8, 0.7)]), "binary"
    )  # type: ignore[list-item]
    assert worse[0]["personalized_best"] is False
    console = Console(record=True, width=200)
    table = personalization_table(list(rows.values()))
    assert table is not None
    console.print(table)
    text = console.export_text()
    assert "federation worse than training alone" in text and "sha256 abababab" in text
    assert personalization_table([]) is None


def test_demo_personalize_reaches_the_spec_and_the_flow(tmp_path: Path) -> None:
    assert demo_spec(DemoOptions(tmp_path), N_FEATURES).personalize is None
    spec = demo_spec(DemoOptions(tmp_path, personalize="fedper"), N_FEATURES)
    assert spec.personalize is not None and spec.personalize.method == "fedper"
    assert spec.torch_model.hidden  # FedPer needs a body: the demo's logreg became an MLP
    params = flow_parameters(spec, "http://127.0.0.1:1", tmp_path / "t", tmp_path, 0)
    assert params["personalize"] == spec.personalize
    trees = demo_spec(DemoOptions(tmp_path, model="xgboost", personalize="finetune"), N_FEATURES)
    assert trees.personalize is not None and trees.trees is not None
    with pytest.raises(DemoError, match="continued boosting"):
        demo_spec(DemoOptions(tmp_path, model="xgboost", personalize="ditto"), N_FEATURES)
    with pytest.raises(DemoError, match="--personalize: unknown method"):
        demo_spec(DemoOptions(tmp_path, personalize="magic"), N_FEATURES)
    json.dumps(spec.model_dump(mode="json"))  # the service stores it as JSON
