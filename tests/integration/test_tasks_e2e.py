"""Multiclass and regression PyTorch runs through the whole federation: the aggregation service
and silo agents as real processes on 127.0.0.1, the coordinator's Prefect flow, over HTTP.

Two federations on one service, each with its own published contract (not a shipped one) and
two silos holding a training file and a held-out test file (`test_path`): `grades` (softmax
regression over three classes) and `dosage` (an MLP regressing a dose in mg). Each task runs
with plain FedAvg and with secure aggregation; the model spec (width, outputs, task, target
range) comes from the published contract, and each silo's metrics on its own test file are read
back with `fedsilo runs show` and must beat the trivial predictor on that file.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from support.live_service import TEST_CONTRACT_KEY, free_port, write_silo_key
from typer.testing import CliRunner

from flows.admin_token import private_token_file
from flows.cli import app
from flows.coordinator import federated_training
from flows.processes import Proc, start_agent, start_service
from flows.run_model import model_for_contract
from flows.service_client import CoordinatorClient
from schemas.contract_registry import sign_contract
from schemas.contracts.loader import Contract
from schemas.specs import SecureAggregationSpec, TrainingSpec
from schemas.task_metrics import score
from silos.config import load_silo_config

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]
START_S = 600.0  # bound on a cold start (agents import torch, Prefect, GX) on a loaded machine
TRAIN_ROWS, TEST_ROWS = 240, 80
SILOS = {"east": 0.0, "west": 0.8}  # each silo's shift of its population
COLUMNS = """
[[columns]]
name = "x1"
type = "numeric"
range = [-5, 5]

[[columns]]
name = "x2"
type = "numeric"
range = [-5, 5]

[[columns]]
name = "site"
type = "categorical"
categories = ["clinic", "home"]
"""
CONTRACTS = {
    "grades": """name = "grades"
version = "1.0.0"
min_rows = 50
features = ["x1", "x2", "site"]

[target]
column = "grade"
task = "multiclass"
values = ["C", "B", "A"]

[[columns]]
name = "grade"
type = "categorical"
categories = ["C", "B", "A"]
"""
    + COLUMNS,
    "dosage": """name = "dosage"
version = "1.0.0"
min_rows = 50
features = ["x1", "x2", "site"]

[target]
column = "dose_mg"
task = "regression"

[[columns]]
name = "dose_mg"
type = "numeric"
unit = "mg"
range = [0, 500]
"""
    + COLUMNS,
}
FEDERATION = {"multiclass": "grades", "regression": "dosage"}  # federation = contract name


def table(task: str, n: int, shift: float, rng: np.random.Generator) -> pd.DataFrame:
    x1 = rng.normal(shift, 1.3, n).clip(-5, 5)
    x2 = rng.normal(-shift, 1.3, n).clip(-5, 5)
    site = rng.choice(["clinic", "home"], n)
    home = (site == "home").astype(float)
    if task == "multiclass":
        z = x1 + 0.6 * x2 + 0.8 * home + rng.normal(0, 0.4, n)
        target = np.array(["C", "B", "A"])[np.digitize(z, [-0.7, 0.9])]
        return pd.DataFrame({"x1": x1, "x2": x2, "site": site, "grade": target})
    dose = (220 + 60 * x1 - 35 * x2 + 40 * home + rng.normal(0, 15, n)).clip(0, 500)
    return pd.DataFrame({"x1": x1, "x2": x2, "site": site, "dose_mg": dose})


@dataclass
class Hub:
    url: str
    token: str
    coord: CoordinatorClient
    contracts: dict[str, Contract]
    root: Path
    procs: list[Proc]

    def logs(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.log_tail(20)}" for p in self.procs)


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory, prefect_api_url: str) -> Iterator[Hub]:
    root = tmp_path_factory.mktemp("tasks-e2e")
    port = free_port()
    service = start_service(root / "service", port, wait_s=START_S)
    procs: list[Proc] = [service]
    try:
        url = f"http://127.0.0.1:{port}"
        token = (root / "service" / "admin.token").read_text().strip()
        coord = CoordinatorClient([url], token=token, retry_for_s=60)
        contracts = {}
        rng = np.random.default_rng(14)
        for task, name in FEDERATION.items():
            coord.create_federation(name)
            contract, body = sign_contract(TEST_CONTRACT_KEY, name, CONTRACTS[name], name)
            coord.publish_contract(name, body)
            contracts[name] = contract
            for silo, shift in SILOS.items():
                folder = root / name / silo
                folder.mkdir(parents=True)
                rows = table(task, TRAIN_ROWS + TEST_ROWS, shift, rng)
                rows[:TRAIN_ROWS].to_csv(folder / "train.csv", index=False)
                rows[TRAIN_ROWS:].to_csv(folder / "test.csv", index=False)
                (folder / "silo.toml").write_text(
                    f'[silo]\nname = "{silo}"\nfederation = "{name}"\n\n'
                    f'[data]\npath = "train.csv"\ntest_path = "test.csv"\ncontract = "{name}"\n'
                    'contract_version = "1.0.0"\n\n'
                    f'[service]\nurls = ["{url}"]\n\n[prefect]\napi_url = "{prefect_api_url}"\n'
                )
                # one institution in both federations: a silo name has one key on a hub
                write_silo_key(load_silo_config(folder / "silo.toml").key_path, silo)
                procs.append(
                    start_agent(folder / "silo.toml", folder / "agent.log", prefect_api_url)
                )
        hub = Hub(url, token, coord, contracts, root, procs)
        for name in FEDERATION.values():
            _wait(hub, lambda n=name: len(coord.silos(n)) == len(SILOS), f"{name} enrolment")
            for silo in SILOS:
                coord.approve(name, silo)
        yield hub
    finally:
        for proc in reversed(procs):
            proc.stop()


def _wait(hub: Hub, condition, what: str) -> None:  # type: ignore[no-untyped-def]
    """Until `condition` holds; fails at once when a process exited (readiness, not a sleep)."""
    deadline = time.monotonic() + START_S
    while not condition():
        dead = [p.name for p in hub.procs if not p.alive()]
        assert not dead, f"{dead} exited waiting for {what}\n{hub.logs()}"
        assert time.monotonic() < deadline, f"no {what} in {START_S:.0f} s\n{hub.logs()}"
        time.sleep(0.2)


@pytest.mark.parametrize("secure", [False, True], ids=["fedavg", "secagg"])
@pytest.mark.parametrize("task", ["multiclass", "regression"])
def test_task_trains_across_silos_and_runs_show_has_each_silos_test_metrics(
    hub: Hub, tmp_path: Path, task: str, secure: bool
) -> None:
    name = FEDERATION[task]
    contract = hub.contracts[name]
    kind, hidden = ("logreg", ()) if task == "multiclass" else ("mlp", (8,))
    model = model_for_contract(kind, hidden, contract)  # type: ignore[arg-type]
    assert model.n_outputs == (3 if task == "multiclass" else 1)
    assert model.target_range == (None if task == "multiclass" else (0.0, 500.0))
    with private_token_file(hub.token) as token_file:
        result = federated_training(
            service_urls=[hub.url],
            admin_token_file=str(token_file),
            federation=name,
            dataset=name,
            model=model,
            training=TrainingSpec(local_epochs=10, lr=0.05, optimizer="adam"),
            rounds=3,
            min_silos=2,
            round_deadline_s=300,
            output_dir=str(tmp_path / "models"),
            # a wide clip: Adam's ten local epochs move the weights far from the start
            secure_aggregation=SecureAggregationSpec(enabled=secure, clip=50.0),
            ready_timeout_s=START_S,
        )
    assert isinstance(result, dict), result
    run_id = str(result["run_id"])

    token = ["--service-url", hub.url, "--token", hub.token]
    shown = CliRunner().invoke(app, ["runs", "show", run_id, "--json", *token])
    assert shown.exit_code == 0, shown.output
    data = json.loads(shown.output)
    assert data["run"]["status"] == "finished" and data["run"]["spec"]["model"]["task"] == task
    final = [r for r in data["rounds"] if any(s.get("metrics") for s in r["silos"])][-1]
    assert final["kind"] == "evaluate"
    metrics = {s["silo"]: s["metrics"] for s in final["silos"] if s.get("metrics")}
    assert set(metrics) == set(SILOS)
    for silo, m in metrics.items():
        folder = hub.root / name / silo
        test = pd.read_csv(folder / "test.csv")
        train = pd.read_csv(folder / "train.csv")
        assert m["n_test"] == TEST_ROWS  # the silo's test file, not a split of train.csv
        if task == "multiclass":
            index = {"C": 0, "B": 1, "A": 2}
            y, y_train = test["grade"].map(index), train["grade"].map(index)
            shares = np.bincount(y_train, minlength=3) / len(y_train)
            trivial = score(task, y, np.tile(shares, (len(y), 1)))
            assert m["auc"] is None and m["rmse"] is None, m
            assert m["f1_macro"] > float(trivial["f1_macro"] or 0) + 0.25, (silo, m, trivial)
            assert m["loss"] < float(trivial["loss"] or 0), (silo, m, trivial)
        else:
            y = test["dose_mg"].to_numpy()
            trivial = score(task, y, np.full(len(y), train["dose_mg"].mean()))
            assert m["accuracy"] is None and m["f1_macro"] is None, m
            assert m["rmse"] < 0.6 * float(trivial["rmse"] or 0), (silo, m, trivial)
            assert m["r2"] > 0.5 and m["mae"] < float(trivial["mae"] or 0), (silo, m, trivial)

    table = CliRunner().invoke(app, ["runs", "show", run_id, *token], env={"COLUMNS": "250"})
    assert table.exit_code == 0, table.output
    headings = ("macro-F1", "acc") if task == "multiclass" else ("RMSE", "MAE", "R²")
    assert "per-silo metrics" in table.output
    assert all(h in table.output for h in headings), table.output
    assert ("AUC" in table.output) is False
