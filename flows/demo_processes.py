"""The demo's processes after its run: kept up for inspection (`--keep-running`, after success
or failure) and stopped on SIGTERM as on Ctrl+C."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path
from types import FrameType

from rich.console import Console
from rich.markup import escape

from flows.processes import Proc


def stop_on_sigterm() -> None:
    """SIGTERM (a service manager, a test harness) stops the demo like Ctrl+C, so the
    processes it started are stopped too."""
    if threading.current_thread() is not threading.main_thread():
        return

    def interrupt(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)


def keep_after_failure(
    keep: bool,
    console: Console,
    ws: Path,
    procs: list[Proc],
    prefect_url: str,
    service_url: str,
    exc: BaseException,
) -> None:
    """`--keep-running` after a failure: say why, then keep the processes still up (the
    caller re-raises once they are stopped)."""
    if keep and any(p.alive() for p in procs):
        console.print(f"[bold red]the demo failed:[/bold red] {escape(str(exc))}")
        keep_running(console, ws, procs, prefect_url, service_url)


def keep_running(
    console: Console, ws: Path, procs: list[Proc], prefect_url: str, service_url: str
) -> None:
    """`--keep-running`: leave every process up (after success or failure) until Ctrl+C,
    saying how to look at them and how to stop them."""
    console.rule("processes kept running")
    for proc in procs:
        state = "running" if proc.alive() else f"exited ({proc.popen.returncode})"
        console.print(f"{proc.name:<24} pid {proc.popen.pid:<8} {state:<12} log {proc.log_path}")
    token = ws / "service" / "admin.token"
    if prefect_url:
        console.print(f"Prefect UI:   {prefect_url.removesuffix('/api')}/runs")
    if service_url:
        console.print(
            f"runs:         fedsilo runs list --service-url {service_url} --token-file {token}"
        )
        console.print(
            f"              fedsilo runs show RUN --service-url {service_url} --token-file {token}"
        )
    console.print(
        f"stop:         Ctrl+C here (or kill -INT {os.getpid()}); the demo then stops every "
        "process above"
    )
    try:
        while True:
            time.sleep(1)
    except KeyboardInterrupt:
        console.print("stopping the demo's processes")
