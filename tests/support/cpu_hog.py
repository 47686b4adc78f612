"""Busy processes beside a test: the load of a shared hospital server, made on purpose.

`cpu_hog(n)` starts `n` Python processes that spin in a pure-Python loop (no sleep, no I/O), so
each keeps one core busy, and always stops them: on exit, on an exception, and when the test
process itself dies (each hog watches its parent and exits when it is gone). `pytest --cpu-hog N`
(tests/conftest.py) runs a whole session beside them; the `cpu_hog` fixture gives one test two.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

# Spins; every ~0.1 s of work it checks that its parent is still there, so a test process
# killed with SIGKILL does not leave busy processes behind.
_SPIN = """
import os, sys
parent = int(sys.argv[1])
while True:
    for _ in range(200_000):
        pass
    if os.getppid() != parent:
        sys.exit(0)
"""


@dataclass
class CpuHog:
    """The running hog processes."""

    procs: list[subprocess.Popen[bytes]]

    def alive(self) -> int:
        """How many hog processes are still running."""
        return sum(1 for p in self.procs if p.poll() is None)

    def cpu_seconds(self) -> float:
        """CPU time (user + system) the hog processes have used so far, from /proc."""
        tick = os.sysconf("SC_CLK_TCK")
        total = 0.0
        for p in self.procs:
            try:
                with open(f"/proc/{p.pid}/stat") as fh:
                    # fields after the command name (which may hold spaces) start at ")"
                    fields = fh.read().rsplit(")", 1)[1].split()
            except FileNotFoundError:
                continue
            total += (int(fields[11]) + int(fields[12])) / tick  # utime, stime
        return total


@contextmanager
def cpu_hog(n: int = 2) -> Iterator[CpuHog]:
    """Run `n` busy processes for the duration of the block; they are stopped on exit."""
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for _ in range(n):
            procs.append(
                subprocess.Popen(
                    [sys.executable, "-c", _SPIN, str(os.getpid())],
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
        yield CpuHog(procs)
    finally:
        for p in procs:
            p.kill()
        for p in procs:
            p.wait(timeout=30)


def wait_busy(hog: CpuHog, cpu_s: float = 0.5, timeout_s: float = 60.0) -> None:
    """Wait until the hog has burnt `cpu_s` CPU seconds: it is really loading the machine."""
    deadline = time.monotonic() + timeout_s
    while hog.cpu_seconds() < cpu_s:
        if time.monotonic() > deadline or hog.alive() < len(hog.procs):
            raise AssertionError(
                f"CPU hog not busy: {hog.alive()}/{len(hog.procs)} processes alive, "
                f"{hog.cpu_seconds():.2f}s CPU after {timeout_s:.0f}s"
            )
        time.sleep(0.1)
