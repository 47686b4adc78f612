"""The Prefect servers fedsilo starts (demo, benchmarks) and deploys (docker-compose,
Kubernetes) batch their task-run events alike (`flows.processes.PREFECT_SERVER_TUNING`); an
operator's own value in the environment wins."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from flows import processes
from flows.processes import PREFECT_SERVER_TUNING

ROOT = Path(__file__).resolve().parents[2]
BATCH = "PREFECT_SERVER_SERVICES_TASK_RUN_RECORDER_BATCH_SIZE"


def _started_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    seen: dict[str, Any] = {}

    def spawn(name: str, args: list[str], log_path: Path, env: dict[str, str]) -> object:
        seen.update(args=args, env=env)
        return object()

    monkeypatch.setattr(processes, "spawn", spawn)
    monkeypatch.setattr(processes, "wait_http", lambda *_a, **_k: None)
    processes.start_prefect_server(tmp_path, 4299)
    assert seen["args"][1:3] == ["server", "start"]
    return dict(seen["env"])


def test_the_started_server_batches_task_run_events(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for key in PREFECT_SERVER_TUNING:
        monkeypatch.delenv(key, raising=False)
    env = _started_env(tmp_path, monkeypatch)
    assert {k: env[k] for k in PREFECT_SERVER_TUNING} == PREFECT_SERVER_TUNING
    assert int(PREFECT_SERVER_TUNING[BATCH]) > 1
    # Prefect reads the interval as whole seconds: under 1 its flush loop would never sleep
    assert int(PREFECT_SERVER_TUNING[BATCH.replace("BATCH_SIZE", "FLUSH_INTERVAL")]) >= 1


def test_an_operator_value_wins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(BATCH, "7")
    assert _started_env(tmp_path, monkeypatch)[BATCH] == "7"


def test_the_deployed_servers_are_tuned_alike() -> None:
    compose = yaml.safe_load((ROOT / "infra" / "docker-compose.yml").read_text())
    env = compose["services"]["prefect"]["environment"]
    assert {k: env.get(k) for k in PREFECT_SERVER_TUNING} == PREFECT_SERVER_TUNING
    docs = list(yaml.safe_load_all((ROOT / "infra" / "k8s" / "prefect.yaml").read_text()))
    containers = [
        c
        for d in docs
        if d and d.get("kind") == "Deployment"
        for c in d["spec"]["template"]["spec"]["containers"]
        if c["name"] == "prefect"
    ]
    assert len(containers) == 1
    k8s_env = {e["name"]: e.get("value") for e in containers[0]["env"]}
    assert {k: k8s_env.get(k) for k in PREFECT_SERVER_TUNING} == PREFECT_SERVER_TUNING
