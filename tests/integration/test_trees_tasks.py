"""Secure-hist for multiclass and regression through the real service over HTTP.

A federation publishes its own contract (not a shipped one: four numeric features, and a
multiclass target of three classes or a regression target in [100, 130]); three silos run the
real silo code (`silos.hist_round`, the secure-aggregation session client) against the service
in a thread (uvicorn on 127.0.0.1, SQLite and PostgreSQL). The service reads the task from the
published contract, grows K trees per boosting round by softmax gradients (multiclass) or
bounds the regression gradients by the target's range; the model it stores equals the
in-process driver's byte for byte, loads in XGBoost, and beats a trivial predictor on held-out
rows.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import xgboost as xgb
from support.live_service import TEST_CONTRACT_KEY, coordinator, enrolled_silo, service_in_thread
from support.secure_hist_driver import run_secure_hist

from aggregation.service.hist_setup import regression_bound
from aggregation.trees.models import evaluate, predict
from flows.service_client import CoordinatorClient
from schemas.contract_registry import sign_contract
from schemas.contracts.loader import Contract, load_contract_text
from schemas.secure_hist.protocol import HistRunConfig
from schemas.specs import RunSpec, SecureAggregationSpec
from schemas.task_metrics import score
from schemas.tasks import Task
from schemas.tree_params import TreeSpec, XGBoostParams, task_fields
from schemas.wire import RoundOpen, RunCreate
from silos import hist_round
from silos.client import SiloClient
from silos.features import FeaturePipeline
from silos.hist_binning import feature_ranges

pytestmark = pytest.mark.integration
SILOS = ("a", "b", "c")
PARAMS = {"max_depth": 3, "max_bin": 16, "eta": 0.3}
HIST = {"fine_cells": 128, "min_rows_per_node": 5}


def contract_toml(task: str) -> str:
    columns = "".join(
        f'[[columns]]\nname = "f{i}"\ntype = "numeric"\nrange = [-4, 4]\n\n' for i in range(4)
    )
    if task == "multiclass":
        target = 'task = "multiclass"\nvalues = ["low", "mid", "high"]\n'
        target_col = (
            '[[columns]]\nname = "y"\ntype = "categorical"\ncategories = ["low", "mid", "high"]\n'
        )
    else:
        target = 'task = "regression"\n'
        target_col = '[[columns]]\nname = "y"\ntype = "numeric"\nrange = [100, 130]\n'
    return (
        f'name = "own_{task}"\nversion = "1.0.0"\nmin_rows = 10\n'
        'features = ["f0", "f1", "f2", "f3"]\n\n'
        f'[target]\ncolumn = "y"\n{target}\n{columns}{target_col}'
    )


def rows(task: str, seed: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Encoded rows (the range pipeline maps [-4, 4] to [0, 1]) and labels by task."""
    rng = np.random.default_rng(seed)
    X = rng.uniform(0, 1, size=(n, 4)).astype(np.float32)
    X[rng.random(n) < 0.05, 2] = np.nan
    z = X[:, 0] + 0.5 * X[:, 1] + rng.normal(scale=0.1, size=n)
    if task == "multiclass":
        return X, np.digitize(z, [0.55, 0.95]).astype(np.float64)  # class index 0..2
    return X, np.clip(100 + 20 * z, 100, 130)


@dataclass
class Fed:
    coord: CoordinatorClient
    silos: dict[str, SiloClient]
    run_id: str
    contract: Contract
    data: dict[str, tuple[np.ndarray, np.ndarray]]


@pytest.fixture(params=["multiclass", "regression"])
def fed(request: pytest.FixtureRequest, db_url: str, tmp_path: Path) -> Iterator[Fed]:
    task = str(request.param)
    text = contract_toml(task)
    contract, body = sign_contract(TEST_CONTRACT_KEY, "f", text, f"own_{task}.toml")
    data = {name: rows(task, i, 160) for i, name in enumerate(SILOS)}
    with service_in_thread(tmp_path / "svc", db_url) as url:
        coord = coordinator(url)
        coord.create_federation("f")
        coord.publish_contract("f", body)
        silos = {n: enrolled_silo(url, coord, "f", n) for n in SILOS}
        trees = TreeSpec.model_validate(
            {
                "kind": "xgboost",
                "mode": "secure-hist",
                "n_features": FeaturePipeline.from_contract(contract).n_features,
                "trees_per_round": 2,
                "params": PARAMS,
                "secure_hist": HIST,
                **task_fields(task, len(contract.classes)),
            }
        )
        spec = RunSpec(
            federation="f",
            dataset=contract.name,
            trees=trees,
            rounds=1,
            min_silos=2,
            secure_aggregation=SecureAggregationSpec(enabled=False),
        )
        run = coord.create_run(RunCreate(spec=spec))
        coord.put_initial_model(run.run_id, b"")
        coord.start_run(run.run_id)
        yield Fed(coord, silos, run.run_id, contract, data)
        for client in silos.values():
            hist_round.forget(client.silo, run.run_id)


def test_secure_hist_task_from_the_published_contract(fed: Fed) -> None:
    contract = load_contract_text(contract_toml(fed.contract.task), "own")

    def step(client: SiloClient, task: Task) -> None:
        stage = task.hist.stage
        if stage == "advertise":
            X, y = fed.data[client.silo]
            hist_round.advertise(client, task, X, y, contract, 1)
        else:
            getattr(hist_round, stage)(client, task)

    fed.coord.open_round(fed.run_id, RoundOpen(round=1, kind="train", deadline_s=60))
    drive_with(fed, step)
    first = fed.coord.rounds(fed.run_id)[0]
    assert first.status == "aggregated", first
    model = fed.coord.download_model(fed.run_id, 1)

    k = len(contract.classes) if contract.task == "multiclass" else 1
    config = HistRunConfig(
        objective=task_fields(contract.task, k)["objective"],
        params=XGBoostParams.model_validate(PARAMS),
        n_trees=2 * k,
        ranges=feature_ranges(FeaturePipeline.from_contract(contract)),
        fine_cells=HIST["fine_cells"],
        min_rows_per_node=HIST["min_rows_per_node"],
        grad_bound=max(1.0, regression_bound(contract)),
        num_class=k if contract.task == "multiclass" else 0,
    )
    if contract.task == "regression":  # max(1, |lo|, |hi|, 2 (hi - lo)) of [100, 130]
        assert config.grad_bound == 130.0
    names = FeaturePipeline.from_contract(contract).feature_names  # the service names them
    reference = run_secure_hist(config, fed.data, threshold=2, feature_names=names)
    assert model == reference.model  # byte for byte the driver's model
    booster = xgb.Booster(model_file=bytearray(model))
    assert booster.num_boosted_rounds() == 2

    X_test, y_test = rows(contract.task, 42, 600)
    theirs = booster.predict(xgb.DMatrix(X_test, feature_names=list(names)))
    np.testing.assert_allclose(predict("xgboost", model, X_test), theirs, rtol=1e-6, atol=1e-5)
    pooled_y = np.concatenate([y for _, y in fed.data.values()])
    metrics = evaluate("xgboost", model, X_test, y_test)
    if contract.task == "multiclass":
        assert theirs.shape == (600, 3)
        majority = np.mean(y_test == np.bincount(pooled_y.astype(int)).argmax())
        assert metrics.accuracy is not None and metrics.accuracy > majority + 0.15
    else:
        trivial = score("regression", y_test, np.full(600, pooled_y.mean()))
        assert metrics.rmse is not None and metrics.rmse < 0.8 * float(trivial["rmse"] or 0)


def drive_with(fed: Fed, step: Callable[[SiloClient, Task], None]) -> None:
    """Hand every task to its silo, the silos answering at the same time (as agents do),
    until round 1 closes or nobody has work (`test_service_secure_hist.drive`)."""
    with ThreadPoolExecutor(len(fed.silos)) as pool:
        while fed.coord.wait_round(fed.run_id, 1, 0).status == "open":
            work = []
            for client in fed.silos.values():
                task = client.next_task(wait_s=0, run_id=fed.run_id)
                if task is not None and task.type == "hist":
                    work.append((client, task))
            if not work:
                break
            for future in [pool.submit(step, client, task) for client, task in work]:
                future.result()
