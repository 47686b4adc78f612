"""The forked agents of the tests (tests/support/prewarmed.py) behave as a fresh `fedsilo`."""

from __future__ import annotations

import sys
from pathlib import Path

from support import prewarmed

# imported at collection, before the session fixture routes agents to the forkserver: the plain
# subprocess spawn
from flows.processes import base_env, spawn


def _run(start, tmp_path: Path, name: str, config: Path) -> tuple[int, str]:
    log = tmp_path / name / "agent.log"
    args = [sys.executable, "-m", "flows.cli", "silo", "start", "--config", str(config)]
    proc = start(name, args, log, base_env())
    code = proc.popen.wait(120)
    return code, log.read_text()


def test_a_forked_agent_exits_and_logs_as_a_fresh_one(tmp_path: Path) -> None:
    config = tmp_path / "missing" / "silo.toml"
    fresh = _run(spawn, tmp_path, "fresh", config)
    forked = _run(prewarmed.spawn, tmp_path, "forked", config)
    assert fresh[0] != 0 and str(config) in fresh[1]  # the command failed, naming the file
    assert forked == fresh
    assert (tmp_path / "forked" / "agent.log").stat().st_mode & 0o777 == 0o600


def test_only_fedsilo_agent_and_service_command_lines_fork() -> None:
    cli = [sys.executable, "-m", "flows.cli"]
    assert prewarmed.forks([*cli, "silo", "start", "--config", "x"])
    assert prewarmed.forks([*cli, "aggregator", "serve", "--workspace", "w"])
    assert not prewarmed.forks([*cli, "runs", "show", "r"])
    assert not prewarmed.forks([sys.executable, "-m", "uvicorn", "aggregation.service.main:app"])
