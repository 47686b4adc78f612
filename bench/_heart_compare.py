"""Run the heart-disease configurations on one system and measure them (for bench/peers.py).

For every configuration: final accuracy and ROC AUC per hospital and pooled (scored here, by
fedsilo's `evaluate`, on the same held-out rows for both systems), wall time from launching
the run's command to the final model on disk, time spent in training rounds, median per-round
overhead (round wall time minus the slowest hospital's local training), bytes each hospital
sent and received (relay counters before and after the run), and the peak summed RSS and PSS
of all the system's processes during the run.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from bench._heart_data import Config, run_spec
from bench._procs import MemorySampler, Relay, terminate, traffic_delta
from flows.baselines import comparison_table
from schemas import tensors
from schemas.specs import param_shapes

MB = 1024 * 1024


@dataclass
class Outcome:
    system: str
    config: str
    accuracy: dict[str, float] = field(default_factory=dict)  # hospital or "all" -> value
    auc: dict[str, float | None] = field(default_factory=dict)
    wall_s: float = 0.0
    rounds_s: float = 0.0
    overhead_ms: float = 0.0
    round_ms: float = 0.0
    sent_kb: dict[str, float] = field(default_factory=dict)  # per hospital, all its traffic
    received_kb: dict[str, float] = field(default_factory=dict)
    detail_kb: dict[str, dict[str, float]] = field(default_factory=dict)
    peak_rss_mb: float = 0.0
    peak_pss_mb: float = 0.0
    peak_pss_mb_by_process: dict[str, float] = field(default_factory=dict)  # with its children
    processes: int = 0
    rounds: int = 0
    warmup: bool = False  # the first run after start-up, 1 round, left out of the tables

    def to_json(self) -> dict:
        return asdict(self)


def score(outcome: Outcome, config: Config, params: list[np.ndarray], tests: dict) -> None:
    spec = run_spec(config, 1).model
    for row in comparison_table(spec, {"m": params}, tests):
        outcome.accuracy[str(row["test_set"])] = float(row["accuracy"])  # type: ignore[arg-type]
        outcome.auc[str(row["test_set"])] = row["auc"]  # type: ignore[assignment]


def traffic(outcome: Outcome, relay: Relay, before: dict, hospitals: list[str]) -> None:
    delta = traffic_delta(before, relay.counters())
    for h in hospitals:
        parts = {k: v for k, v in delta.items() if k == h or k.startswith(f"{h}:")}
        outcome.sent_kb[h] = sum(v["up"] for v in parts.values()) / 1024
        outcome.received_kb[h] = sum(v["down"] for v in parts.values()) / 1024
        if len(parts) > 1:
            outcome.detail_kb[h] = {
                f"{k.split(':', 1)[1]} {d}": v[u] / 1024
                for k, v in parts.items()
                for d, u in (("sent", "up"), ("received", "down"))
            }


def measure(
    system: str,
    config: Config,
    launch: Callable[[], tuple[subprocess.Popen, Path]],
    wait: Callable[[subprocess.Popen, Path], None],
    sampler: MemorySampler,
    base_pids: list[int],
    relay: Relay,
    hospitals: list[str],
    names: dict[int, str] | None = None,
    run_name: str = "run command",
) -> tuple[Outcome, subprocess.Popen, Path]:
    """Launch one run, wait for its final model, and fill the timing, traffic and memory."""
    outcome = Outcome(system, config.label)
    before = relay.counters()
    started = time.time()
    proc, out = launch()
    sampler.roots = [*base_pids, proc.pid]
    sampler.reset()
    try:
        wait(proc, out)
    finally:
        outcome.wall_s = time.time() - started
        sampler.sample()
        outcome.peak_rss_mb = sampler.peak_rss / MB
        outcome.peak_pss_mb = sampler.peak_pss / MB
        outcome.processes = sampler.peak_processes
        labels = {**(names or {}), proc.pid: run_name}
        outcome.peak_pss_mb_by_process = {
            labels.get(pid, str(pid)): v / MB
            for pid, v in sampler.peak_pss_by_root.items()
            if v > 0  # a previous run's process, gone before this run's first sample
        }
        sampler.roots = list(base_pids)
    traffic(outcome, relay, before, hospitals)
    return outcome, proc, out


def ours_wait(timeout_s: float) -> Callable[[subprocess.Popen, Path], None]:
    def wait(proc: subprocess.Popen, out: Path) -> None:
        try:
            code = proc.wait(timeout_s)
        except subprocess.TimeoutExpired as exc:
            terminate([proc])
            raise RuntimeError(
                f"fedsilo run did not finish within {timeout_s:.0f}s; see {out.parent}"
            ) from exc
        if code != 0 or not out.exists():
            log = (out.parent / "coordinator.log").read_text(errors="replace")[-3000:]
            raise RuntimeError(f"fedsilo coordinator failed ({code}):\n{log}")

    return wait


def ours_finish(outcome: Outcome, config: Config, out: Path, tests: dict) -> None:
    result = json.loads(out.read_text())
    train = [r for r in result["rounds"] if r["kind"] == "train"]
    outcome.rounds = len(train)
    outcome.rounds_s = sum(r["wall_seconds"] for r in train)
    outcome.round_ms = 1000 * statistics.median(r["wall_seconds"] for r in train)
    outcome.overhead_ms = 1000 * statistics.median(
        r["wall_seconds"] - r["slowest_train_seconds"] for r in train
    )
    spec = run_spec(config, 1).model
    params, _ = tensors.decode_expected(Path(result["model_path"]).read_bytes(), param_shapes(spec))
    score(outcome, config, params, tests)


def flower_finish(outcome: Outcome, config: Config, server: dict, out: Path, tests: dict) -> None:
    rounds = server["rounds"]
    slowest: dict[int, float] = {}
    for f in out.glob("train_*.jsonl"):
        for line in f.read_text().splitlines():
            rec = json.loads(line)
            slowest[rec["round"]] = max(slowest.get(rec["round"], 0.0), rec["train_seconds"])
    walls = [r["end"] - r["start"] for r in rounds]
    outcome.rounds = len(rounds)
    outcome.rounds_s = sum(walls)
    outcome.round_ms = 1000 * statistics.median(walls)
    outcome.overhead_ms = 1000 * statistics.median(
        w - slowest.get(r["round"], 0.0) for w, r in zip(walls, rounds, strict=True)
    )
    with np.load(out / "final.npz") as f:
        params = [f[f"p{i}"].astype(np.float32) for i in range(len(f.files))]
    score(outcome, config, params, tests)
