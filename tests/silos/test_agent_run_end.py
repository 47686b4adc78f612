"""How the silo's flow run ends, against a real Prefect server: as the run ended at the service
(a failed run ends it Failed, a finished one Completed, each with a message the agent logs); a
flow run a killed agent left Running is marked Crashed when the agent rejoins the run; SIGTERM
in the middle of a round ends the flow run Crashed and the agent with exit 0.

The agent's service is `httpx.MockTransport` handing out scripted tasks
(`support.scripted_silo`); the handlers are replaced by a stub.
"""

from __future__ import annotations

import logging
import os
import signal
from pathlib import Path
from typing import Any

import httpx
import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterName
from prefect.states import Running
from support.scripted_silo import scripted_agent, silo_config
from typer.testing import CliRunner

from flows.cli import app
from schemas.specs import ModelSpec, RunSpec
from schemas.tasks import RunEndedTask, Task, TrainTask
from silos import agent
from silos.config import load_silo_config
from silos.handlers import REGISTRY
from silos.keys import load_or_create_key

SPEC = RunSpec(
    federation="f", dataset="heart_disease", model=ModelSpec(kind="logreg", n_features=35)
)


def _script(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tasks: list[Task]) -> Path:
    """The agent's service hands out `tasks` in order; returns silo.toml."""
    config = silo_config(tmp_path)
    key = load_or_create_key(tmp_path / "ws" / "keys" / "silo_ed25519.pem")

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/silo/tasks":
            return httpx.Response(200, content=tasks.pop(0).model_dump_json())
        return httpx.Response(200, json={})

    scripted_agent(monkeypatch, key, handler)
    return config


def _flow_runs(name: str) -> dict[str, str]:
    with get_client(sync_client=True) as prefect:
        runs = prefect.read_flow_runs(
            flow_run_filter=FlowRunFilter(name=FlowRunFilterName(any_=[name]))
        )
    return {str(r.id): r.state_type.value if r.state_type else "" for r in runs}


@pytest.mark.parametrize(
    ("run_status", "ended", "message"),
    [
        ("failed", "FAILED", "failed at the service"),
        ("finished", "COMPLETED", "finished; silo a served 1 rounds of it"),
    ],
)
def test_the_flow_run_ends_as_the_run_did_and_takes_over_from_a_killed_agents(
    prefect_api_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    run_status: str,
    ended: str,
    message: str,
) -> None:
    run = f"run-{run_status}"
    name = f"a-{run}"
    with get_client(sync_client=True) as prefect:  # a killed agent's flow run of this run
        stale = prefect.create_flow_run(
            agent.silo_run_flow, name=name, tags=["silo:a", f"run:{run}"], state=Running()
        )
    tasks: list[Task] = [
        TrainTask(run_id=run, round=1, spec=SPEC),  # the agent's poll
        TrainTask(run_id=run, round=1, spec=SPEC),  # its flow run's
        RunEndedTask(run_id=run, round=1, run_status=run_status),
    ]
    config = _script(tmp_path, monkeypatch, tasks)
    monkeypatch.setattr(REGISTRY, "dispatch", lambda ctx, work: None)
    with caplog.at_level(logging.INFO, logger="fedsilo.silo"):
        agent._serve(agent.make_client(None), load_silo_config(config), max_runs=1)  # type: ignore[arg-type]
    lines = [r.getMessage() for r in caplog.records if r.name == "fedsilo.silo"]
    done = [line for line in lines if "its part of run" in line]
    assert len(done) == 1, lines
    assert done[0].startswith(f"silo a: its part of run {run} ended {ended}: run {run} ")
    assert message in done[0]
    states = _flow_runs(name)
    assert states.pop(str(stale.id)) == "CRASHED"
    assert list(states.values()) == [ended]
    assert [line for line in lines if "marked Crashed" in line and str(stale.id) in line]


def test_sigterm_in_a_round_crashes_the_flow_run_and_stops_the_agent_with_0(
    prefect_api_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = "run-sigterm"
    tasks: list[Task] = [TrainTask(run_id=run, round=1, spec=SPEC)]
    config = _script(tmp_path, monkeypatch, tasks)

    def terminated(ctx: Any, work: Task) -> None:  # systemctl stop, mid-round
        os.kill(os.getpid(), signal.SIGTERM)

    def one_run(config_path: str, max_runs: int | None = None) -> None:
        agent.silo_training(config_path, run)
        raise AssertionError("SIGTERM did not stop the agent")

    monkeypatch.setattr(REGISTRY, "dispatch", terminated)
    monkeypatch.setattr(agent, "run_agent", one_run)
    before = signal.getsignal(signal.SIGTERM)
    result = CliRunner().invoke(app, ["silo", "start", "--config", str(config)])
    assert result.exit_code == 0, (result.output, result.exception)
    assert result.output.strip().splitlines()[-1] == "silo a: stopped (SIGTERM)"
    assert signal.getsignal(signal.SIGTERM) is before
    assert list(_flow_runs(f"a-{run}").values()) == ["CRASHED"]


def test_sigterm_while_the_service_is_down_stops_the_agent_at_once(
    prefect_api_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The flow run's end sends what it held (a statement no POST carried) and the silo's
    countersignatures: on a stop, one try each, never the agent's retry-forever wait for a
    service that is down (systemd kills after TimeoutStopSec, docker after 10 s)."""
    run = "run-sigterm-down"
    tasks: list[Task] = [TrainTask(run_id=run, round=1, spec=SPEC)]
    config = silo_config(tmp_path)
    key = load_or_create_key(tmp_path / "ws" / "keys" / "silo_ed25519.pem")
    down: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        if down:  # the service went away before the stop
            down.append(request.url.path)
            return httpx.Response(503, json={"detail": "down"})
        if request.url.path == "/v1/silo/tasks":
            return httpx.Response(200, content=tasks.pop(0).model_dump_json())
        return httpx.Response(200, json={})

    scripted_agent(monkeypatch, key, handler)

    def terminated(ctx: Any, work: Task) -> None:
        ctx.client.carries = frozenset({"validation_result"})
        held = ctx.client.carry_statement(run, "validation_result", {"silo": "a", "ok": True})
        assert held is None  # held for the run's next POST, which never comes
        down.append("")
        os.kill(os.getpid(), signal.SIGTERM)

    def one_run(config_path: str, max_runs: int | None = None) -> None:
        agent.silo_training(config_path, run)
        raise AssertionError("SIGTERM did not stop the agent")

    monkeypatch.setattr(REGISTRY, "dispatch", terminated)
    monkeypatch.setattr(agent, "run_agent", one_run)
    result = CliRunner().invoke(app, ["silo", "start", "--config", str(config)])
    assert result.exit_code == 0, (result.output, result.exception)
    assert result.output.strip().splitlines()[-1] == "silo a: stopped (SIGTERM)"
    assert down[1:] == [f"/v1/silo/runs/{run}/statements"]  # tried once, then let go
