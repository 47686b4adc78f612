"""A Dask silo served by the real agent: its rounds run on a memory-limited LocalCluster.

A real service (uvicorn on 127.0.0.1, SQLite), a real Prefect API and two silo agents' flows
(`silo_training`), one on pandas and one whose silo.toml sends its table to Dask
(``[compute] local_max_bytes = 0``: two worker processes of 800 MB). The test plays the
coordinator: a secure-hist run, whose model must be byte for byte the in-process driver's on
the same rows (the Dask silo's histograms, summed over its partitions, are exactly the pandas
ones), then bagging rounds of XGBoost and LightGBM, whose global models must score as the
all-pandas federation's (AUC within 0.03). The scheduler's task prefixes show the work ran on
the cluster: the chunked fingerprint, the secure-hist shards, XGBoost's and LightGBM's training
tasks. A Dask silo without a held-out test file is told to name one.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from dask_tables import CONTRACT_TEXT, bank_contract, transactions
from sklearn.metrics import roc_auc_score
from support.fault_helpers import wait_until
from support.live_service import coordinator, service_in_thread
from support.secure_hist_driver import run_secure_hist
from support.silo_contracts import enrol, publish

from aggregation.trees.models import merge_bagging, predict_proba
from flows.service_client import CoordinatorClient
from schemas import tensors
from schemas.secure_hist.protocol import HistRunConfig
from schemas.specs import ModelSpec, RunSpec, SecureAggregationSpec, param_shapes
from schemas.tree_params import TreeSpec, XGBoostParams
from schemas.wire import RoundOpen, RunCreate, RunFinish
from silos import agent
from silos.compute import close_shared, read_partitions, shared_client
from silos.config import load_silo_config
from silos.dask_data import prepare_run_data
from silos.exceptions import DataError
from silos.features import FeaturePipeline
from silos.hist_binning import feature_ranges
from silos.tree_trainer import train_trees

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

FED = "cards"
PIPELINE = FeaturePipeline.from_contract(bank_contract())
PARAMS = {"max_depth": 2, "max_bin": 16}
HIST = {"fine_cells": 64, "min_rows_per_node": 5}
COMPUTE = """
[compute]
local_max_bytes = 0
workers = 2
worker_memory_bytes = 800_000_000
partition_bytes = 20_000
"""


@dataclass
class Fed:
    coord: CoordinatorClient
    configs: dict[str, Path]
    rows: dict[str, tuple[np.ndarray, np.ndarray]]  # training rows, encoded
    test: tuple[np.ndarray, np.ndarray]


def _silo(root: Path, name: str, url: str, prefect: str, seed: int, compute: str) -> Path:
    folder = root / name
    folder.mkdir(parents=True)
    # row groups of 800: the Dask silo's table is three partitions
    transactions(2400, seed, first_id=seed * 10_000).to_parquet(
        folder / "train.parquet", row_group_size=800
    )
    transactions(600, 100 + seed, first_id=900_000 + seed * 10_000).to_parquet(
        folder / "test.parquet"
    )
    path = folder / "silo.toml"
    path.write_text(
        f'[silo]\nname = "{name}"\nfederation = "{FED}"\n\n'
        '[data]\npath = "train.parquet"\ntest_path = "test.parquet"\ncontract = "bank_tx"\n'
        'contract_version = "1.0.0"\n\n'
        f'[service]\nurls = ["{url}"]\n\n[prefect]\napi_url = "{prefect}"\n\n'
        '[policy.trees]\nallowed_modes = ["bagging", "secure-hist"]\n' + compute
    )
    return path


@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory, prefect_api_url: str) -> Iterator[Fed]:
    root = tmp_path_factory.mktemp("dask-agent")
    with service_in_thread(root / "svc", f"sqlite:///{root / 'svc.db'}") as url:
        coord = coordinator(url)
        coord.create_federation(FED)
        publish(coord, FED, CONTRACT_TEXT)
        configs = {
            "pandas-bank": _silo(root, "pandas-bank", url, prefect_api_url, 1, ""),
            "dask-bank": _silo(root, "dask-bank", url, prefect_api_url, 2, COMPUTE),
        }
        rows = {}
        for name, path in configs.items():
            enrol(path, coord)
            train = path.parent / "train.parquet"
            rows[name] = PIPELINE.transform(pd.read_parquet(train), train)
        tests = [
            PIPELINE.transform(pd.read_parquet(p.parent / "test.parquet"), p)
            for p in configs.values()
        ]
        test = (np.concatenate([t[0] for t in tests]), np.concatenate([t[1] for t in tests]))
        try:
            yield Fed(coord, configs, rows, test)
        finally:
            close_shared()


def _serve_round(fed: Fed, spec: RunSpec) -> tuple[str, bytes]:
    """One round of a run served by both agents' flows; returns the run and its model."""
    coord = fed.coord
    run = coord.create_run(RunCreate(spec=spec)).run_id
    coord.put_initial_model(run, b"")
    coord.start_run(run)
    coord.open_round(run, RoundOpen(round=1, kind="train", deadline_s=600))
    states: dict[str, Any] = {}
    threads = [
        threading.Thread(
            target=lambda n=name, p=path: states.update({n: agent.silo_training(str(p), run)}),
            daemon=True,
        )
        for name, path in fed.configs.items()
    ]
    for thread in threads:
        thread.start()
    try:
        answered = wait_until(
            lambda: (
                ((r := coord.wait_round(run, 1, wait_s=10)).complete or r.status != "open") and r
            ),
            240,
            f"both silos to answer round 1 of run {run}",
            lambda: str(states),
        )
        # a secure-hist round aggregates by itself; a bagging round when the coordinator closes it
        closed = answered if answered.status != "open" else coord.close_round(run, 1)
    finally:  # the agents' flows end with the run
        coord.finish_run(run, RunFinish(status="finished", final_model_version=1))
        for thread in threads:
            thread.join(120)
    assert closed.status == "aggregated", closed
    assert all(s.is_completed() for s in states.values()), states
    return run, coord.download_model(run, 1)


def _ledger(coord: CoordinatorClient, run: str, kind: str) -> list[dict[str, Any]]:
    return [
        json.loads(e.payload) if isinstance(e.payload, str) else e.payload
        for e in coord.ledger(run)
        if e.kind == kind
    ]


def _prefixes(fed: Fed) -> set[str]:
    """Task prefixes the Dask silo's cluster has run (the agent's client, still open)."""
    compute = load_silo_config(fed.configs["dask-bank"]).compute
    client = shared_client(compute)
    return set(client.run_on_scheduler(lambda dask_scheduler: list(dask_scheduler.task_prefixes)))


def _one_round(trees: TreeSpec) -> RunSpec:
    """One round of `trees` on the bank table among at least two silos, updates in the clear."""
    return RunSpec(
        federation=FED,
        dataset="bank_tx",
        trees=trees,
        rounds=1,
        min_silos=2,
        secure_aggregation=SecureAggregationSpec(enabled=False),
    )


def _pause_fraction(dask_worker: Any) -> float:
    return float(dask_worker.memory_manager.memory_pause_fraction)


def test_a_secure_hist_round_on_dask_sums_to_the_pandas_histograms(fed: Fed) -> None:
    trees = TreeSpec.model_validate(
        {
            "kind": "xgboost",
            "mode": "secure-hist",
            "n_features": PIPELINE.n_features,
            "trees_per_round": 2,
            "params": PARAMS,
            "secure_hist": HIST,
        }
    )
    spec = _one_round(trees)
    run, model = _serve_round(fed, spec)
    config = HistRunConfig(
        objective="binary:logistic",
        params=XGBoostParams.model_validate(PARAMS),
        n_trees=2,
        ranges=feature_ranges(PIPELINE),
        fine_cells=HIST["fine_cells"],
        min_rows_per_node=HIST["min_rows_per_node"],
    )
    names = PIPELINE.feature_names  # the service names the features from the contract
    assert model == run_secure_hist(config, fed.rows, threshold=2, feature_names=names).model
    # the Dask silo validated its table by partitions, fingerprinted and trained on its cluster
    validated = {v["silo"]: v for v in _ledger(fed.coord, run, "validation_result")}
    assert validated["dask-bank"]["success"] and validated["dask-bank"]["n_rows"] == 2400
    compute = load_silo_config(fed.configs["dask-bank"]).compute
    workers = shared_client(compute).scheduler_info()["workers"].values()
    assert [w["memory_limit"] for w in workers] == [800_000_000, 800_000_000]
    pause = shared_client(compute).run(_pause_fraction)
    assert list(pause.values()) == [0.9, 0.9]  # silos.compute.WORKER_CONFIG reached them
    table = read_partitions(fed.configs["dask-bank"].parent / "train.parquet", None, 20_000)
    assert table.npartitions == 3  # the shards' vectors were summed, not one vector sent
    done = _prefixes(fed)
    assert {"fingerprint_table", "facts", "HistShard"} <= done, done


@pytest.mark.parametrize("kind", ["xgboost", "lightgbm"])
def test_bagging_rounds_on_dask_score_as_the_pandas_federation(fed: Fed, kind: str) -> None:
    before = _prefixes(fed)
    params = {"max_depth": 3} if kind == "xgboost" else {"num_leaves": 8}
    trees = TreeSpec.model_validate(
        {
            "kind": kind,
            "mode": "bagging",
            "n_features": PIPELINE.n_features,
            "trees_per_round": 5,
            "params": params,
        }
    )
    spec = _one_round(trees)
    run, model = _serve_round(fed, spec)
    accepted = {u["silo"]: u for u in _ledger(fed.coord, run, "update_accepted")}
    assert accepted["dask-bank"]["n_examples"] == 2400
    # the all-pandas federation: each silo's trees grown in memory (seed: run's + round)
    seed = spec.training.seed + 1
    updates = {
        name: (train_trees(trees, None, X, y, seed=seed).model, len(y))
        for name, (X, y) in fed.rows.items()
    }
    reference = merge_bagging(kind, None, updates)
    X_test, y_test = fed.test
    ours = roc_auc_score(y_test, predict_proba(kind, model, X_test))
    theirs = roc_auc_score(y_test, predict_proba(kind, reference, X_test))
    assert ours > 0.7 and abs(ours - theirs) < 0.03, (ours, theirs)
    # the library's training tasks ran on the silo's workers (read and encoding fuse into
    # the read_parquet tasks)
    trained = {"xgboost": "first_valid-part", "lightgbm": "train_part"}[kind]
    new = _prefixes(fed) - before
    assert trained in new, " ".join(sorted(new))


def test_a_pytorch_run_is_declined_by_the_dask_silo_saying_why(fed: Fed) -> None:
    model = ModelSpec(kind="logreg", n_features=PIPELINE.n_features)
    spec = RunSpec(
        federation=FED,
        dataset="bank_tx",
        model=model,
        rounds=1,
        min_silos=1,
        secure_aggregation=SecureAggregationSpec(enabled=False),
    )
    run = fed.coord.create_run(RunCreate(spec=spec)).run_id
    initial = {n: np.zeros(s, dtype=np.float32) for n, s in param_shapes(model)}
    fed.coord.put_initial_model(run, tensors.encode(initial))
    fed.coord.start_run(run)
    fed.coord.open_round(run, RoundOpen(round=1, deadline_s=600))
    state = agent.silo_training(str(fed.configs["dask-bank"]), run)
    assert state.is_failed(), state
    [declined] = _ledger(fed.coord, run, "decline")
    assert (declined["silo"], declined["scope"], declined["cause"]) == ("dask-bank", "run", "data")
    assert "table is on Dask ([compute]); train tasks need it in memory" in declined["reason"]


def test_a_dask_silo_without_a_test_file_is_told_to_name_one(tmp_path: Path) -> None:
    path = _silo(tmp_path, "dask-bank", "http://127.0.0.1:1", "http://127.0.0.1:2/api", 2, COMPUTE)
    path.write_text(path.read_text().replace('test_path = "test.parquet"\n', ""))
    with pytest.raises(DataError, match=r"train\.parquet: .*Dask.*set \[data\] test_path"):
        prepare_run_data(load_silo_config(path))
