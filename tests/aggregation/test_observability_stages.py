"""Stage latencies in /metrics: a secure-aggregation round and a secure-hist round driven
through the live service by the silos' own protocol code (as in test_service_secagg.py and
test_service_secure_hist.py, minus Prefect)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from support.live_service import (
    coordinator,
    enrolled_silo,
    publish_shipped_contract,
    service_in_thread,
)
from support.prometheus import scrape, value
from support.validation import validate_all

from schemas import tensors
from schemas.contracts.loader import load_contract
from schemas.specs import ModelSpec, RunSpec, SecureAggregationSpec, param_shapes
from schemas.tasks import Task
from schemas.tree_params import TreeSpec
from schemas.wire import Metrics, RoundOpen, RunCreate
from silos import hist_round, secure_round
from silos.client import SiloClient
from silos.features import FeaturePipeline

NAMES = ("a", "b", "c")
METRICS = Metrics(n_test=10, loss=0.5, accuracy=0.8, auc=0.9).model_dump_json()
TOKEN = {"Authorization": "Bearer test-admin-token"}


def _task(client: SiloClient, expected: str) -> Any:  # the task type `expected` names
    task = client.next_task(wait_s=2)
    assert task is not None and task.type == expected, task
    return task


def test_secure_aggregation_stage_durations(sqlite_url: str, tmp_path: Path) -> None:
    model = ModelSpec(kind="logreg", n_features=4)
    shapes = param_shapes(model)
    dim = sum(int(np.prod(s)) for _, s in shapes)
    spec = RunSpec(
        federation="f",
        dataset="toy",
        model=model,
        rounds=1,
        min_silos=2,
        secure_aggregation=SecureAggregationSpec(clip=5.0, threshold=2),
    )
    ws = tmp_path / "silo-ws"
    with service_in_thread(tmp_path / "svc", sqlite_url) as url:
        coord = coordinator(url)
        coord.create_federation("f")
        silos = {n: enrolled_silo(url, coord, "f", n) for n in NAMES}
        run = coord.create_run(RunCreate(spec=spec))
        zeros = {name: np.zeros(shape, dtype=np.float32) for name, shape in shapes}
        coord.put_initial_model(run.run_id, tensors.encode(zeros))
        coord.start_run(run.run_id)
        coord.open_round(run.run_id, RoundOpen(round=1, deadline_s=60))
        validate_all(silos, run.run_id)
        for name, c in silos.items():
            secure_round.advertise(c, c.key, _task(c, "secagg_advertise"), ws / name, n_examples=10)
        for name, c in silos.items():
            secure_round.share(c, c.key, _task(c, "secagg_share"), ws / name)
        for name, c in silos.items():
            task = _task(c, "secagg_masked")
            assert task.secagg is not None and task.secagg.weight is not None
            vector = task.secagg.weight * np.full(dim, 0.1)
            message = secure_round.masked_update(c, c.key, task, ws / name, vector)
            c.submit_masked(run.run_id, 1, message, 10, 0.01, METRICS)
        for name, c in silos.items():
            secure_round.unmask(c, c.key, _task(c, "secagg_unmask"), ws / name)
        assert coord.wait_round(run.run_id, 1, wait_s=5).status == "aggregated"
        m = scrape(httpx.get(url + "/metrics", headers=TOKEN).text)
    stages = {
        lab: v
        for (n, labels), v in m.items()
        if n == "fedsilo_secagg_stage_duration_seconds_count"
        for k, lab in labels
        if k == "stage"
    }
    # every stage the round went through was timed once; unmask ends with the round
    assert {s for s, count in stages.items() if count == 1} >= {
        "advertise",
        "share",
        "masked",
        "unmask",
    }
    assert value(m, "fedsilo_rounds_closed_total", mode="secure", status="aggregated") == 1
    total = value(m, "fedsilo_round_duration_seconds_sum", mode="secure")
    stage_sum = value(m, "fedsilo_secagg_stage_duration_seconds_sum")
    assert 0 < stage_sum <= total + 0.01  # the stages partition (at most) the round


def test_secure_hist_stage_durations(sqlite_url: str, tmp_path: Path) -> None:
    contract = "heart_disease"
    n_features = FeaturePipeline.from_contract(load_contract(contract)).n_features
    rng = np.random.default_rng(0)
    data = {}
    for name in NAMES:
        X = rng.uniform(0, 1, size=(120, n_features)).astype(np.float32)
        data[name] = (X, (X[:, 0] + rng.normal(scale=0.2, size=120) > 0.5).astype(np.float64))
    trees = TreeSpec.model_validate(
        {
            "kind": "xgboost",
            "mode": "secure-hist",
            "n_features": n_features,
            "trees_per_round": 1,
            "params": {"max_depth": 2, "max_bin": 16},
            "secure_hist": {"fine_cells": 64, "min_rows_per_node": 5},
        }
    )
    spec = RunSpec(
        federation="f",
        dataset=contract,
        trees=trees,
        rounds=1,
        min_silos=2,
        secure_aggregation=SecureAggregationSpec(enabled=False),
    )

    def step(client: SiloClient, task: Task) -> None:
        assert task.type == "hist"
        if task.hist.stage == "advertise":
            hist_round.advertise(client, task, *data[client.silo], load_contract(contract), 1)
        else:
            getattr(hist_round, task.hist.stage)(client, task)

    with service_in_thread(tmp_path / "svc", sqlite_url) as url:
        coord = coordinator(url)
        coord.create_federation("f")
        publish_shipped_contract(coord, "f", contract)  # the service reads the published one
        silos = {n: enrolled_silo(url, coord, "f", n) for n in NAMES}
        run = coord.create_run(RunCreate(spec=spec))
        coord.put_initial_model(run.run_id, b"")
        coord.start_run(run.run_id)
        coord.open_round(run.run_id, RoundOpen(round=1, kind="train", deadline_s=60))
        try:
            with ThreadPoolExecutor(len(silos)) as pool:
                while coord.wait_round(run.run_id, 1, 0).status == "open":
                    work = [
                        (c, t)
                        for c in silos.values()
                        if (t := c.next_task(wait_s=0, run_id=run.run_id)) is not None
                        and t.type == "hist"
                    ]
                    assert work, "the round is open but no silo has work"
                    for future in [pool.submit(step, c, t) for c, t in work]:
                        future.result()
        finally:
            for c in silos.values():
                hist_round.forget(c.silo, run.run_id)
        assert coord.wait_round(run.run_id, 1, 0).status == "aggregated"
        m = scrape(httpx.get(url + "/metrics", headers=TOKEN).text)
    name = "fedsilo_secure_hist_stage_duration_seconds_count"
    assert value(m, name, stage="advertise") == 1
    # one masked and one unmask stage per aggregation: the setup sum and each tree level
    masked, unmask = value(m, name, stage="masked"), value(m, name, stage="unmask")
    assert masked >= 2 and unmask == masked
    assert value(m, "fedsilo_rounds_closed_total", mode="secure-hist", status="aggregated") == 1
