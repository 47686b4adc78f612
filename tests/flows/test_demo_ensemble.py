"""`fedsilo demo --ensemble`: the run's spec (kinds per silo, rounds), what it refuses, its
flow parameters, and the per-silo rows read from a run's ledger entries."""

from __future__ import annotations

import inspect
import json
from pathlib import Path

import pytest
from rich.console import Console

from flows.coordinator import federated_training
from flows.demo import DemoOptions, demo_spec, flow_parameters
from flows.demo_ensemble import DEMO_ROUNDS, ensembled
from flows.ensemble_view import ensemble_rows, ensemble_table
from flows.exceptions import DemoError
from schemas.contracts.loader import load_contract
from schemas.lineage import LineageEntry
from silos.features import FeaturePipeline

N_FEATURES = FeaturePipeline.from_contract(load_contract("heart_disease")).n_features
SILOS = ["Cleveland", "Hungary", "Switzerland", "VA Long Beach"]


def test_ensemble_spec_gives_each_silo_its_kind(tmp_path: Path) -> None:
    spec = ensembled(demo_spec(DemoOptions(tmp_path), N_FEATURES), SILOS)
    assert spec.ensemble is not None and spec.rounds == DEMO_ROUNDS
    assert [spec.ensemble.kind_for(s) for s in SILOS] == ["xgboost", "mlp", "lightgbm", "logreg"]
    assert spec.model is not None and spec.model.hidden  # the mlp member's layers
    params = flow_parameters(spec, "http://127.0.0.1:1", tmp_path / "t", tmp_path, 60.0)
    inspect.signature(federated_training.fn).bind(**params)
    assert params["ensemble"] == spec.ensemble
    assert ensembled(demo_spec(DemoOptions(tmp_path), N_FEATURES), SILOS, rounds=3).rounds == 3


def test_ensemble_refuses_tree_runs_and_dp(tmp_path: Path) -> None:
    with pytest.raises(DemoError, match="drop --model/--mode"):
        ensembled(demo_spec(DemoOptions(tmp_path, model="xgboost"), N_FEATURES), SILOS)
    with pytest.raises(DemoError, match="differential privacy"):
        ensembled(demo_spec(DemoOptions(tmp_path, dp=True), N_FEATURES), SILOS)


def _entry(kind: str, payload: dict[str, object]) -> LineageEntry:
    return LineageEntry.model_construct(kind=kind, payload=json.dumps(payload))


def test_rows_pair_the_latest_weights_with_each_silos_signed_metrics() -> None:
    sha = "ab" * 32
    member = {"silo": "a", "kind": "mlp", "sha256": sha}
    entries = [
        _entry("aggregate", {"ensemble": [{**member, "weight": 0.5}]}),
        _entry("aggregate", {"ensemble": [{**member, "weight": 0.9}]}),
        _entry("aggregate", {"round": 3}),  # not an ensemble entry
        _entry(
            "ensembled",
            {
                "silo": "a",
                "round": 5,
                "ensemble_sha256": sha,
                "member_sha256": sha,
                "n_test": 30,
                "ensemble_auc": 0.7,
                "member_auc": 0.8,
                "ensemble_loss": 0.6,
                "member_loss": 0.5,
                "personal_sha256": "cd" * 32,
                "personal_auc": 0.75,
                "personal_loss": 0.55,
            },
        ),
    ]
    (row,) = ensemble_rows(entries)
    assert row == {
        "silo": "a",
        "kind": "mlp",
        "weight": 0.9,
        "member_sha256": sha,
        "ensemble_auc": 0.7,
        "member_auc": 0.8,
        "worse_than_member": True,
        "personal_auc": 0.75,
        "personal_sha256": "cd" * 32,
        "personal_worse": True,  # below the member alone (0.8)
    }
    table = ensemble_table([row])
    assert table is not None
    console = Console(record=True, width=220)
    console.print(table)
    text = console.export_text()
    assert "0.750" in text and "personal below ensemble or member" in text


def test_cli_kinds_parse_and_bad_ones_are_named() -> None:
    from flows.ensemble_view import parse_ensemble

    spec = parse_ensemble("default=xgboost, hungary=mlp")
    assert spec.kind_for("hungary") == "mlp" and spec.kind_for("cleveland") == "xgboost"
    with pytest.raises(ValueError, match="'hungary' is not SILO=KIND"):
        parse_ensemble("default=xgboost,hungary")
    with pytest.raises(ValueError, match='needs a "default" kind'):
        parse_ensemble("hungary=mlp")
