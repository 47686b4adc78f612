"""The CPU hog that load tests run beside: it really burns CPU, and it always stops."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
from support.cpu_hog import CpuHog, cpu_hog, wait_busy
from support.progress import wait_progressing


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def test_fixture_hog_burns_cpu_in_two_processes(cpu_hog: CpuHog) -> None:
    wait_busy(cpu_hog, cpu_s=1.0)
    assert cpu_hog.alive() == 2
    assert len({p.pid for p in cpu_hog.procs}) == 2


def test_hog_stops_when_the_block_raises() -> None:
    with pytest.raises(RuntimeError), cpu_hog(2) as hog:
        wait_busy(hog)
        pids = [p.pid for p in hog.procs]
        raise RuntimeError("the test failed")
    assert all(p.poll() is not None for p in hog.procs)
    assert all(_gone(pid) for pid in pids)


def test_hog_stops_when_its_parent_is_killed(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """SIGKILL leaves no `finally`: each hog notices its parent is gone and exits."""
    pids_file = tmp_path / "pids"
    script = textwrap.dedent(
        f"""
        import sys, time
        sys.path.insert(0, {str(os.path.dirname(__file__))!r})
        from support.cpu_hog import cpu_hog
        with cpu_hog(2) as hog:
            open({str(pids_file)!r}, "w").write(" ".join(str(p.pid) for p in hog.procs))
            time.sleep(600)
        """
    )
    parent = subprocess.Popen([sys.executable, "-c", script])
    try:
        wait_progressing(
            lambda: pids_file.exists() and pids_file.read_text(),
            lambda: parent.poll(),
            "the hog's pids",
            idle_s=120,
        )
        pids = [int(p) for p in pids_file.read_text().split()]
        assert len(pids) == 2 and not any(_gone(pid) for pid in pids)
    finally:
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait()
    deadline = time.monotonic() + 60  # each hog checks its parent every ~0.1 s of spinning
    while not all(_gone(pid) or _zombie(pid) for pid in pids):
        assert time.monotonic() < deadline, f"hog processes {pids} outlived their parent"
        time.sleep(0.1)


def _zombie(pid: int) -> bool:
    """Exited but not yet reaped by init (which adopted it)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True
