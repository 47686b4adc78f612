"""Process plumbing shared by the peer comparisons: ports, the byte-counting relay, memory.

Memory is read from Linux's /proc (no extra dependency): every sample sums the resident set
(RSS) and the proportional set (PSS, shared pages split between the processes sharing them)
over each system's processes and all their descendants (Flower's SuperLink and SuperNodes
spawn the ServerApp and ClientApp processes; ours spawns nothing, but the agents' Prefect
flows run in-process). RSS double-counts libraries that several processes map (torch in
every silo), so PSS is the fairer total; both are reported.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

HOST = "127.0.0.1"
BENCH = Path(__file__).resolve().parent
PAGE = 4096


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout_s: float, what: str, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{what} exited with code {proc.returncode} before listening")
        try:
            with socket.create_connection((HOST, port), timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"{what} did not listen on {HOST}:{port} within {timeout_s:.0f}s")


@dataclass
class Relay:
    """One relay process; `routes` maps a silo name to (listen port, target port)."""

    proc: subprocess.Popen
    control: int
    routes: dict[str, tuple[int, int]]

    def counters(self) -> dict[str, dict[str, int]]:
        with socket.create_connection((HOST, self.control), timeout=5) as s:
            data = b""
            while chunk := s.recv(65536):
                data += chunk
        return json.loads(data)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


def start_relay(targets: dict[str, int], log: Path, tries: int = 5) -> Relay:
    """A relay port for every name, forwarding to its target port on 127.0.0.1. A port that
    another process took between `free_port` and the relay's bind (a race on a busy machine,
    seen in CI) gets the relay started again on fresh ports."""
    for _ in range(tries):
        control = free_port()
        routes = {name: (free_port(), target) for name, target in targets.items()}
        args = [sys.executable, str(BENCH / "_relay.py"), "--control", str(control)]
        args += [f"{lp}={tp}:{name}" for name, (lp, tp) in routes.items()]
        seen = log.stat().st_size if log.exists() else 0
        with open(log, "ab") as f:
            proc = subprocess.Popen(
                args, stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )
        try:
            wait_port(control, 60, "byte-counting relay", proc)
            return Relay(proc, control, routes)
        except RuntimeError:
            with open(log, "rb") as f:
                f.seek(seen)
                if proc.poll() is None or b"address already in use" not in f.read():
                    raise
    raise RuntimeError(f"byte-counting relay: a port it picked was taken, {tries} times")


def traffic_delta(before: dict, after: dict) -> dict[str, dict[str, int]]:
    return {
        name: {k: after[name][k] - before.get(name, {}).get(k, 0) for k in ("up", "down")}
        for name in after
    }


def _children(pid: int) -> list[int]:
    out: list[int] = []
    try:
        for tid in Path(f"/proc/{pid}/task").iterdir():
            text = (tid / "children").read_text().split()
            out.extend(int(c) for c in text)
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        pass
    return out


def tree(roots: list[int]) -> set[int]:
    seen: set[int] = set()
    stack = list(roots)
    while stack:
        pid = stack.pop()
        if pid in seen:
            continue
        seen.add(pid)
        stack.extend(_children(pid))
    return seen


def _rss_pss(pid: int) -> tuple[int, int]:
    try:
        rss = int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE
        pss = 0
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                pss = int(line.split()[1]) * 1024
                break
        return rss, pss
    except (FileNotFoundError, ProcessLookupError, PermissionError, IndexError):
        return 0, 0


@dataclass
class MemorySampler:
    """Samples the summed RSS/PSS of a process tree every `period_s` in a thread."""

    roots: list[int]
    period_s: float = 0.2
    peak_rss: int = 0
    peak_pss: int = 0
    peak_processes: int = 0
    peak_pss_by_root: dict[int, int] = field(default_factory=dict)  # each root with its children
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def sample(self) -> None:
        seen: set[int] = set()
        rss_total = pss_total = 0
        for root in list(self.roots):
            pids = tree([root]) - seen
            seen |= pids
            totals = [_rss_pss(p) for p in pids]
            rss_total += sum(r for r, _ in totals)
            pss = sum(p for _, p in totals)
            pss_total += pss
            self.peak_pss_by_root[root] = max(self.peak_pss_by_root.get(root, 0), pss)
        self.peak_rss = max(self.peak_rss, rss_total)
        self.peak_pss = max(self.peak_pss, pss_total)
        self.peak_processes = max(self.peak_processes, len(seen))

    def reset(self) -> None:
        self.peak_rss = self.peak_pss = self.peak_processes = 0
        self.peak_pss_by_root = {}

    def __enter__(self) -> MemorySampler:
        def loop() -> None:
            while not self._stop.wait(self.period_s):
                self.sample()

        self.sample()
        self._thread = threading.Thread(target=loop, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join()
        self.sample()


def terminate(procs: list[subprocess.Popen], timeout_s: float = 10.0) -> None:
    """SIGTERM then SIGKILL, newest first; only the processes this harness started."""
    for p in reversed(procs):
        if p.poll() is None:
            p.terminate()
    for p in reversed(procs):
        try:
            p.wait(timeout_s)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
