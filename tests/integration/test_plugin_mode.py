"""A round mode added through the registries alone runs through a live service and agents.

`prevalence_hub` (a service plugin, named in FEDSILO_SERVICE_PLUGINS) and `prevalence_silo` (a
handler plugin, named in each silo.toml's ``[agent] plugins``) live in tests/support/; nothing
in aggregation/, silos/, schemas/ or flows/ names the mode. The service and the agents are real
processes on 127.0.0.1; the test only plays the coordinator.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
from support.fault_helpers import MODEL, START_S, wait_until
from support.live_service import free_port, publish_shipped_contract, write_heart_silos
from support.stopping import stop_all

from flows.processes import Proc, base_env, spawn, start_service
from flows.service_client import CoordinatorClient
from schemas import tensors
from schemas.specs import RunSpec, SecureAggregationSpec, param_shapes
from schemas.wire import RoundOpen, RunCreate
from silos.config import load_silo_config
from silos.local_data import prepare_local_data

pytestmark = pytest.mark.integration

SUPPORT = str(Path(__file__).resolve().parents[1] / "support")
SILOS = ("cleveland", "hungary", "switzerland")


def _pythonpath() -> str:
    return os.pathsep.join(p for p in (SUPPORT, os.environ.get("PYTHONPATH", "")) if p)


def test_plugin_round_mode_end_to_end(tmp_path: Path, prefect_api_url: str) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    procs: list[Proc] = []
    try:
        procs.append(
            start_service(
                tmp_path / "service",
                port,
                wait_s=START_S,
                env={"FEDSILO_SERVICE_PLUGINS": "prevalence_hub", "PYTHONPATH": _pythonpath()},
            )
        )
        token = (tmp_path / "service" / "admin.token").read_text().strip()
        coord = CoordinatorClient([url], token=token, retry_for_s=120)
        coord.create_federation("heart")
        publish_shipped_contract(coord, "heart", "heart_disease")
        configs = write_heart_silos(tmp_path / "silos", [url], prefect_api_url)
        for name in SILOS:
            with configs[name].open("a") as f:
                f.write('\n[agent]\nplugins = ["prevalence_silo"]\n')
            env = base_env(PREFECT_API_URL=prefect_api_url, PYTHONPATH=_pythonpath())
            args = ["-m", "flows.cli", "silo", "start", "--config", str(configs[name])]
            log = configs[name].parent / "agent.log"
            procs.append(spawn(f"silo agent {name}", [sys.executable, *args], log, env))

        def logs() -> str:
            return "\n".join(f"--- {p.name}\n{p.log_tail(40)}" for p in procs)

        wait_until(
            lambda: len([s for s in coord.silos("heart") if s.status == "pending"]) >= len(SILOS),
            3 * START_S,
            "every agent to enrol",
            logs,
        )
        for name in SILOS:
            coord.approve("heart", name)

        spec = RunSpec(
            federation="heart",
            dataset="heart_disease",
            model=MODEL,
            rounds=1,
            min_silos=len(SILOS),
            secure_aggregation=SecureAggregationSpec(enabled=False),
            mode="prevalence",
        )
        run = coord.create_run(RunCreate(spec=spec))
        initial = {n: np.zeros(s, dtype=np.float32) for n, s in param_shapes(MODEL)}
        coord.put_initial_model(run.run_id, tensors.encode(initial))
        coord.start_run(run.run_id)
        coord.open_round(run.run_id, RoundOpen(round=1, deadline_s=3600))

        def all_answered() -> bool:
            out = coord.wait_round(run.run_id, 1, wait_s=10)
            return out.complete

        wait_until(all_answered, 20 * START_S, "every silo to answer the prevalence round", logs)
        out = coord.close_round(run.run_id, 1)
        assert out.status == "aggregated", out
        model = json.loads(coord.download_model(run.run_id, out.model_version or 0))

        expected_rows = expected_pos = 0
        for name in SILOS:
            y = prepare_local_data(load_silo_config(configs[name])).y_train
            expected_rows += len(y)
            expected_pos += int((y > 0.5).sum())
        assert model == {
            "rows": expected_rows,
            "positives": expected_pos,
            "prevalence": expected_pos / expected_rows,
        }
        entries = coord.ledger(run.run_id)
        aggregate = [json.loads(e.payload) for e in entries if e.kind == "aggregate"]
        assert aggregate and aggregate[-1]["mode"] == "prevalence"
        assert sorted(c["silo"] for c in aggregate[-1]["contributors"]) == sorted(SILOS)
        assert "model_saved" in [e.kind for e in entries]
    finally:
        stop_all(procs)
