"""The silo agent's life: one agent per workspace (a second refuses to start, naming the
holder; the lock dies with its process), a round whose flow run cannot start is declined at
once (a silo.toml edited into a typo, an unreachable Prefect API) and logged once, a revoked
silo's agent stops with its own exit code, Ctrl+C exits 130 and SIGTERM 0.

The service is `httpx.MockTransport` at the silo client's edge (`support.scripted_silo`); no
test here needs a Prefect server.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from prefect.settings import PREFECT_API_URL, temporary_settings
from support.scripted_silo import silo_config
from typer.testing import CliRunner

from flows.cli import app
from flows.cli.errors import EXIT_CODES, INTERRUPTED, REVOKED, USAGE
from schemas.specs import ModelSpec, RunSpec
from schemas.tasks import Task, TrainTask
from silos import agent, workspace_lock
from silos.client import SiloClient
from silos.config import load_silo_config
from silos.keys import load_or_create_key
from silos.workspace_lock import LOCK_FILE, WorkspaceBusy

README = Path(__file__).resolve().parents[2] / "README.md"
SPEC = RunSpec(
    federation="f", dataset="heart_disease", model=ModelSpec(kind="logreg", n_features=35)
)
RUN = "run-lifecycle"
runner = CliRunner()


def _silo_out(status: str) -> dict[str, Any]:
    return {
        "name": "a",
        "federation": "f",
        "status": status,
        "public_key": "00" * 32,
        "enrolled_at": datetime.now(UTC).isoformat(),
    }


@pytest.fixture
def keep_umask() -> Iterator[None]:
    """`run_agent` sets umask 077 for its process: this one's is put back after the test."""
    umask = os.umask(0o022)
    os.umask(umask)
    try:
        yield
    finally:
        os.umask(umask)


def _client(tmp_path: Path, handler: Callable[[httpx.Request], httpx.Response]) -> SiloClient:
    key: Ed25519PrivateKey = load_or_create_key(tmp_path / "ws" / "keys" / "silo_ed25519.pem")
    return SiloClient(
        "http://service.test",
        federation="f",
        silo="a",
        key=key,
        retry_for_s=1,
        transport=httpx.MockTransport(handler),
    )


# --- one agent per workspace ---------------------------------------------------------------


def test_a_second_agent_on_the_workspace_refuses_to_start_naming_it_and_the_holder(
    tmp_path: Path, keep_umask: None
) -> None:
    config = silo_config(tmp_path)
    workspace = load_silo_config(config).workspace
    with workspace_lock.held(workspace):  # the first agent (this process)
        assert (workspace / LOCK_FILE).read_text().strip() == str(os.getpid())
        with pytest.raises(WorkspaceBusy) as busy:
            agent.run_agent(str(config), max_runs=0)
        result = runner.invoke(app, ["silo", "start", "--config", str(config), "--max-runs", "0"])
    assert busy.value.pid == str(os.getpid())
    assert result.exit_code == USAGE, result.output
    line = " ".join(result.output.split())
    assert f"silo workspace {workspace} is in use by process {os.getpid()}" in line
    assert line.startswith("error: ") and "stop it first" in line


def test_the_lock_goes_with_its_process_even_after_sigkill(tmp_path: Path) -> None:
    workspace = tmp_path / "ws"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, pathlib; from silos import workspace_lock\n"
            "with workspace_lock.held(pathlib.Path(sys.argv[1])):\n"
            "    print('held', flush=True); sys.stdin.read()",
            str(workspace),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        with pytest.raises(WorkspaceBusy, match=f"in use by process {holder.pid} "):
            with workspace_lock.held(workspace):
                pass
    finally:
        holder.kill()
        holder.wait()
    with workspace_lock.held(workspace):  # no stale lock: the kernel dropped it
        assert (workspace / LOCK_FILE).read_text().strip() == str(os.getpid())


def test_reset_privacy_budget_is_refused_while_the_agent_runs(tmp_path: Path) -> None:
    config = silo_config(tmp_path)
    workspace = load_silo_config(config).workspace
    args = ["silo", "reset-privacy-budget", "--config", str(config), "--reason", "lost file"]
    with workspace_lock.held(workspace):
        result = runner.invoke(app, [*args, "--discard-valid-budget"])
    assert result.exit_code == USAGE, result.output
    assert "is in use by process" in result.output
    assert not (workspace / "privacy").exists()  # nothing was reset


# --- a round whose flow run cannot start is declined at once ------------------------------


def _scripted_loop(
    tmp_path: Path, tasks: list[Task]
) -> tuple[SiloClient, list[dict[str, Any]], Path]:
    statements: list[dict[str, Any]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/silo/tasks":
            return httpx.Response(200, content=tasks.pop(0).model_dump_json())
        if request.url.path.endswith("/statements"):
            statements.append(json.loads(request.content))
        return httpx.Response(200, json={})

    return _client(tmp_path, handler), statements, silo_config(tmp_path)


def _break_config(config: Path) -> None:
    config.write_text(config.read_text() + "max_rounds_per_rnu = 50\n")  # under [policy]


def _break_prefect(config: Path) -> None:
    pass  # the test points Prefect at a port nobody listens on


@pytest.mark.parametrize(
    ("breaks", "names"),
    [
        (_break_config, "key 'policy.max_rounds_per_rnu': Extra inputs are not permitted"),
        (_break_prefect, "Prefect (http://127.0.0.1:9/api) could not run silo flow run a-run-"),
    ],
)
def test_a_round_whose_flow_run_cannot_start_is_declined_and_logged_once(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    breaks: Callable[[Path], None],
    names: str,
) -> None:
    monkeypatch.setattr(agent, "REPEAT_WAIT_S", 0.0)
    # the service offers round 1 three times (as it would until the decline), then round 2
    tasks: list[Task] = [TrainTask(run_id=RUN, round=r, spec=SPEC) for r in (1, 1, 1, 2)]
    client, statements, config = _scripted_loop(tmp_path, tasks)
    cfg = load_silo_config(config)
    breaks(config)
    with (
        caplog.at_level(logging.INFO, logger="fedsilo.silo"),
        temporary_settings({PREFECT_API_URL: "http://127.0.0.1:9/api"}),
    ):
        agent._serve(client, cfg, max_runs=4)
    declines = [s["payload"] for s in statements if s.get("kind") == "decline"]
    assert [(d["round"], d["scope"], d["cause"]) for d in declines] == [
        (1, "round", "internal"),
        (1, "round", "internal"),
        (1, "round", "internal"),
        (2, "round", "internal"),
    ]
    assert names in declines[0]["reason"]
    lines = [r.getMessage() for r in caplog.records if r.name == "fedsilo.silo"]
    assert [line for line in lines if "joining run" in line] == [
        f"silo a: joining run {RUN} at round 1",
        f"silo a: joining run {RUN} at round 2",
    ]
    declined = [line for line in lines if "declining the round" in line]
    assert len(declined) == 2, lines  # once per round, not once per offer
    assert declined[0].startswith(f"silo a: run {RUN}, round 1: declining the round (internal)")
    assert names in declined[0]


# --- a revoked silo's agent stops with its own code ---------------------------------------


def test_a_revoked_silo_stops_the_agent_with_its_documented_exit_code(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, keep_umask: None
) -> None:
    status = {"now": "approved"}

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/enrol"):
            return httpx.Response(200, json=_silo_out(status["now"]))
        if request.url.path == "/v1/silo/tasks":  # the coordinator revokes it meanwhile
            status["now"] = "revoked"
            return httpx.Response(403, json={"code": "forbidden", "detail": "silo 'a' is revoked"})
        return httpx.Response(200, json={})

    client = _client(tmp_path, handler)
    config = silo_config(tmp_path)
    monkeypatch.setattr(agent, "make_client", lambda config, retry_for_s=600.0: client)
    monkeypatch.setattr(agent, "end_interrupted", lambda *args: None)
    monkeypatch.setattr(agent, "warm_up_and_report", lambda *args: None)
    result = runner.invoke(app, ["silo", "start", "--config", str(config)])
    assert result.exit_code == REVOKED == 8, result.output
    line = " ".join(result.output.split())
    assert "error: silo a has been revoked by the coordinator of f" in line
    assert "silo 'a' is revoked" in line
    assert (REVOKED, "`silo start`: the coordinator revoked this silo; the agent stopped") in (
        EXIT_CODES
    )
    assert "| 8 | `silo start`: the coordinator revoked this silo; the agent stopped |" in (
        README.read_text(encoding="utf-8")
    )


# --- Ctrl+C exits 130, SIGTERM 0 ----------------------------------------------------------


def test_ctrl_c_stops_the_agent_with_130_after_saying_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def interrupted(config_path: str, max_runs: int | None = None) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(agent, "run_agent", interrupted)
    result = runner.invoke(app, ["silo", "start", "--config", str(silo_config(tmp_path))])
    assert result.exit_code == INTERRUPTED == 130, result.output
    assert result.output.strip().splitlines()[-1] == "silo a: stopped"


def test_sigterm_stops_the_agent_cleanly_with_0(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def serving(config_path: str, max_runs: int | None = None) -> None:
        os.kill(os.getpid(), signal.SIGTERM)  # systemctl stop, docker stop
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # serving: the handler interrupts it
            time.sleep(0.01)
        raise AssertionError("SIGTERM did not stop the agent")

    monkeypatch.setattr(agent, "run_agent", serving)
    before = signal.getsignal(signal.SIGTERM)
    result = runner.invoke(app, ["silo", "start", "--config", str(silo_config(tmp_path))])
    assert result.exit_code == 0, result.output
    assert result.output.strip().splitlines()[-1] == "silo a: stopped (SIGTERM)"
    assert signal.getsignal(signal.SIGTERM) is before  # the command put the handler back
