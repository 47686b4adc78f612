"""Silo agents and services for the tests, forked from an interpreter with their imports done.

Every end-to-end test starts fresh agents (`flows.processes.start_agent`), about a hundred in a
CI run, and a fresh `python -m flows.cli silo start` spends most of its CPU importing: torch,
pandas with pyarrow, Prefect, the agent itself (measured with py-spy over
test_federation_e2e.py: imports were 71 % of the agents' samples). On a 2-core machine that
import time is what the suite waits on. So the tests start agents from a multiprocessing
*forkserver* that imported those modules once per pytest-xdist worker; each agent is a fork of
it that runs the same `fedsilo silo start` command line, with its own environment and log file,
as its own process (signals, exit codes and `/proc` as before).

What differs from a fresh interpreter, and how it is made equal:
- the working directory and sys.path: the caller's cwd, PYTHONPATH from the agent's
  environment, then the interpreter's own entries (not pytest's, which the forkserver has);
- the environment: the child replaces `os.environ` with the agent's, then has Prefect re-read
  its settings (`refresh_global_settings_context`; Prefect reads them once, at import) and
  re-apply its logging configuration;
- stdout and stderr: the log file is dup'ed onto file descriptors 1 and 2;
- the root logger: Prefect, imported first here, configured it; it is reset as a fresh
  interpreter has it when the command configures its logging;
- interpreter exit: the child joins its non-daemon threads and runs the atexit handlers (Prefect
  flushes its logs and events there) before it exits, as the interpreter would.

The aggregation service (`fedsilo aggregator serve`, `flows.processes.start_service`) is
forked the same way. The demo, `fedsilo` commands run by tests, uvicorn-started replicas and the
README's by-hand test still start agents and services as fresh interpreters, so that path stays
covered. FEDSILO_TEST_FORK_AGENTS=0 turns this off.
"""

from __future__ import annotations

import atexit
import functools
import json
import logging
import multiprocessing
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

from flows.processes import Proc, open_log

# The agent's imports, and the libraries its rounds load later (PyTorch; XGBoost and LightGBM,
# which bring scikit-learn; Great Expectations, which an agent loads for its first validation:
# 2.8 s of CPU per validating agent, and importing it starts no thread and opens no file):
# paid once per xdist worker instead of once per agent.
PRELOAD = [
    "flows.cli",
    "silos.agent",
    "silos.handlers",
    "silos.warmup",
    "silos.trainer",
    "silos.tree_trainer",
    "silos.gate",
    "silos.gx_runner",
    "aggregation.service.main",
    "support.gc_frozen",  # last: freezes what the modules above created
]
# the command lines run as forks: the agent and the aggregation service
FORKED_COMMANDS = (["silo", "start"], ["aggregator", "serve"])
ENABLED_ENV = "FEDSILO_TEST_FORK_AGENTS"

_context: multiprocessing.context.ForkServerContext | None = None
_started: list[ForkedProcess] = []


def enabled() -> bool:
    return os.environ.get(ENABLED_ENV, "1") != "0"


def _forkserver() -> multiprocessing.context.ForkServerContext:
    global _context
    if _context is None:
        ctx = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload(PRELOAD)
        _context = ctx
    return _context


class ForkedProcess:
    """The part of `subprocess.Popen` that `flows.processes.Proc` and the tests use."""

    def __init__(self, process: multiprocessing.process.BaseProcess, args: list[str]) -> None:
        self._process = process
        self.args = args
        assert process.pid is not None
        self.pid: int = process.pid

    @property
    def returncode(self) -> int | None:
        return self._process.exitcode  # negative for a signal, as Popen's

    def poll(self) -> int | None:
        return self._process.exitcode

    def wait(self, timeout: float | None = None) -> int:
        self._process.join(timeout)
        code = self._process.exitcode
        if code is None:
            raise subprocess.TimeoutExpired(self.args, timeout or 0.0)
        return code

    def send_signal(self, sig: int) -> None:
        if self._process.exitcode is None:
            os.kill(self.pid, sig)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


def spawn(name: str, args: list[str], log_path: Path, env: dict[str, str]) -> Proc:
    """`flows.processes.spawn` for one of FORKED_COMMANDS (`python -m flows.cli silo start ...`,
    `... aggregator serve ...`): the same command, log file and environment, run as a fork of
    the warm forkserver."""
    if args[:3] != [sys.executable, "-m", "flows.cli"]:
        raise ValueError(f"not a fedsilo command line: {args}")
    os.close(open_log(log_path))  # created with the same modes as a subprocess's log
    popen = _start(args[3:], log_path, env, _fresh_sys_path(env))
    return Proc(name=name, popen=popen, log_path=log_path)


@functools.cache
def _interpreter_path() -> tuple[str, ...]:
    """sys.path of a fresh `python -c` without PYTHONPATH, less its first entry (the cwd)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = subprocess.run(
        [sys.executable, "-c", "import json, sys; print(json.dumps(sys.path[1:]))"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return tuple(json.loads(out))


def _fresh_sys_path(env: dict[str, str]) -> list[str]:
    """What `python -m flows.cli` started here with `env` has as sys.path: the cwd, then
    PYTHONPATH's entries, then the interpreter's own (not pytest's additions, which the
    forkserver inherited: a fresh agent cannot import the tests' modules)."""
    extra = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    return [os.getcwd(), *extra, *_interpreter_path()]


def forks(args: list[str]) -> bool:
    """Whether `args` is a command line this module runs as a fork."""
    return args[:3] == [sys.executable, "-m", "flows.cli"] and args[3:5] in FORKED_COMMANDS


def kill_leftovers() -> None:
    """SIGKILL whatever a test left running, so that the worker's exit (multiprocessing joins
    its children) does not wait on it. A plain subprocess would have been left behind."""
    for process in _started:
        if process.poll() is None:
            process.kill()
            process.wait()
    _started.clear()


def _start(args: list[str], log_path: Path, env: dict[str, str], path: list[str]) -> ForkedProcess:
    # not daemonic: a silo's Dask LocalCluster starts worker processes of its own
    process = _forkserver().Process(target=_run_cli, args=(args, str(log_path), env, path))
    process.start()
    _started.append(ForkedProcess(process, args))
    return _started[-1]


def _run_cli(args: list[str], log_path: str, env: dict[str, str], path: list[str]) -> None:
    """In the forked child: become `python -m flows.cli <args>` with `env` and its log."""
    os.environ.clear()
    os.environ.update(env)
    os.chdir(path[0])
    sys.path[:] = path
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    for stream in (sys.stdout, sys.stderr):
        stream.reconfigure(line_buffering=True, write_through=True)  # type: ignore[union-attr]
    sys.argv = ["fedsilo", *args]

    from prefect.context import refresh_global_settings_context
    from prefect.logging.configuration import setup_logging

    refresh_global_settings_context()
    setup_logging(incremental=True)
    # A fresh `fedsilo silo start` configures the root logger (logging.basicConfig, INFO, its
    # own format) before Prefect is first imported, and Prefect then leaves the root alone;
    # here Prefect was imported first and took the root: give it back in its pristine state.
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    root.setLevel(logging.WARNING)

    from flows.cli import app

    code: int | str | None = 0
    try:
        app(args=args, prog_name="fedsilo")
    except SystemExit as exit_:
        code = exit_.code
    finally:
        for thread in threading.enumerate():
            if thread is not threading.current_thread() and not thread.daemon:
                thread.join()
        atexit._run_exitfuncs()
        sys.stdout.flush()
        sys.stderr.flush()
    if code not in (0, None):
        if isinstance(code, str):
            print(code, file=sys.stderr)
            code = 1
        os._exit(int(code))
