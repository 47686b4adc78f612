"""Start and stop the federation's processes on this machine (demo, tests, local trials).

Every process is a plain subprocess bound to 127.0.0.1 with its output in a log file, so
what the demo does is exactly what an operator would run by hand.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import httpx

from flows.exceptions import DemoError

TELEMETRY_OFF = {
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "DO_NOT_TRACK": "1",
    "GX_ANALYTICS_ENABLED": "false",
}


# Prefect's task-run recorder writes each task-run event in a transaction of its own (batch size
# 1): a federation's rounds send several a second (every silo's and the coordinator's round task
# runs), and on a 2-core host that was about a third of the server's CPU per round
# (bench/README.md, "fewer hops, batched task-run events"). Batched and flushed at least every
# second, the run history lags by a second at most. Values set in the environment win.
PREFECT_SERVER_TUNING = {
    "PREFECT_SERVER_SERVICES_TASK_RUN_RECORDER_BATCH_SIZE": "200",
    "PREFECT_SERVER_SERVICES_TASK_RUN_RECORDER_FLUSH_INTERVAL": "1",
}


class ProcessHandle(Protocol):
    """What a `Proc` needs of its child: `subprocess.Popen` has it, and so do the test suite's
    agents forked from a warm interpreter (tests/support/prewarmed.py)."""

    @property
    def pid(self) -> int: ...

    @property
    def returncode(self) -> int | None: ...

    def poll(self) -> int | None: ...

    def wait(self, timeout: float | None = None) -> int: ...

    def send_signal(self, sig: int) -> None: ...

    def kill(self) -> None: ...


@dataclass
class Proc:
    name: str
    popen: ProcessHandle
    log_path: Path

    def alive(self) -> bool:
        return self.popen.poll() is None

    def stop(self, timeout_s: float = 10.0) -> None:
        if not self.alive():
            return
        self.popen.send_signal(signal.SIGINT)
        try:
            self.popen.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait()

    def kill9(self) -> None:
        self.popen.kill()
        self.popen.wait()

    def log_tail(self, n: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except FileNotFoundError:
            return "(no log)"


def base_env(**extra: str) -> dict[str, str]:
    env = {**os.environ, **TELEMETRY_OFF, "PYTHONUNBUFFERED": "1"}
    env.update(extra)
    return env


def open_log(log_path: Path) -> int:
    """`log_path` opened for appending, 0600 in a 0700 folder (logs name silos, runs and
    paths): a file descriptor for a child's stdout and stderr."""
    log_path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(log_path.parent, 0o700)
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    os.fchmod(fd, 0o600)
    return fd


def spawn(name: str, args: list[str], log_path: Path, env: dict[str, str]) -> Proc:
    """Start `args` with its output appended to `log_path` (`open_log`). The child keeps this
    process's umask; the service and the agent set their own (077) at start."""
    with os.fdopen(open_log(log_path), "ab") as log:
        popen = subprocess.Popen(
            args, stdout=log, stderr=subprocess.STDOUT, env=env, stdin=subprocess.DEVNULL
        )
    return Proc(name=name, popen=popen, log_path=log_path)


def wait_http(proc: Proc, url: str, timeout_s: float) -> None:
    """Wait until `url` answers 200, or raise naming the process and its log."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not proc.alive():
            raise DemoError(
                f"{proc.name} exited early; its log {proc.log_path} ends with:\n{proc.log_tail()}"
            )
        try:
            if httpx.get(url, timeout=2.0).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.25)
    raise DemoError(
        f"{proc.name} did not answer {url} within {timeout_s:.0f}s; see {proc.log_path}"
    )


def start_service(
    workspace: Path,
    port: int,
    database_url: str = "",
    wait_s: float = 180.0,
    env: dict[str, str] | None = None,
) -> Proc:
    """`fedsilo aggregator serve` as a process; `env` adds FEDSILO_SERVICE_* settings.

    The wait ends as soon as it answers (or exits); the bound is for a machine so loaded that
    the interpreter's imports and the database migrations take minutes."""
    args = [
        sys.executable,
        "-m",
        "flows.cli",
        "aggregator",
        "serve",
        "--workspace",
        str(workspace),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    if database_url:
        args += ["--database-url", database_url]
    proc = spawn("aggregation service", args, workspace / "service.log", base_env(**(env or {})))
    wait_http(proc, f"http://127.0.0.1:{port}/healthz", wait_s)
    return proc


def start_agent(config_path: Path, log_path: Path, prefect_api_url: str | None) -> Proc:
    env = base_env(**({"PREFECT_API_URL": prefect_api_url} if prefect_api_url else {}))
    args = [sys.executable, "-m", "flows.cli", "silo", "start", "--config", str(config_path)]
    return spawn(f"silo agent {config_path.parent.name}", args, log_path, env)


def start_prefect_server(home: Path, port: int, wait_s: float = 180.0) -> Proc:
    """`prefect server start` on 127.0.0.1 with its own SQLite database under `home`, its
    task-run events batched (`PREFECT_SERVER_TUNING`)."""
    env = base_env(
        **{k: os.environ.get(k, v) for k, v in PREFECT_SERVER_TUNING.items()},
        PREFECT_HOME=str(home),
        PREFECT_SERVER_API_HOST="127.0.0.1",
        PREFECT_SERVER_API_PORT=str(port),
        PREFECT_UI_ENABLED="true",
    )
    env.pop("PREFECT_API_URL", None)
    prefect = str(Path(sys.executable).with_name("prefect"))
    proc = spawn(
        "prefect server",
        [prefect, "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        home / "server.log",
        env,
    )
    wait_http(proc, f"http://127.0.0.1:{port}/api/health", wait_s)
    return proc
