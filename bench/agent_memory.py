"""What a silo agent costs in memory: idle, through a tree-only run, through a PyTorch run.

The four-hospital heart-disease federation of bench/peers.py as real processes on 127.0.0.1
(the aggregation service and four `fedsilo silo start` agents; a Prefect server of its own
unless `--prefect-url` is given). Three phases, each sampling every agent's PSS (from
/proc/<pid>/smaps_rollup, with its children) every 0.2 s:

1. idle: once every agent has warmed up (validated and loaded its table, reported ready),
   `--idle-s` seconds of nothing;
2. a tree-only run: XGBoost bagging, `--rounds` rounds;
3. a PyTorch run: logistic regression with FedAvg, `--rounds` rounds (the peers' task).

After each phase it reads every agent's /proc/<pid>/maps for torch's and XGBoost's shared
libraries: an agent that imported torch maps libtorch, so "torch loaded" is read from the
process itself, not assumed. Targets (issue 20): idle peak PSS per agent under 250 MB, and an
agent's peak through the PyTorch run under Flower's SuperNode plus its ClientApp on the same
task. Flower's figure is the median SuperNode(+ClientApp) peak recorded by bench/peers.py
(`--flower-json`, default bench/results/peers.json): its venv is not needed here.

    python bench/agent_memory.py [--rounds 2] [--idle-s 10] [--prefect-url URL] [--json F]
    python bench/agent_memory.py --before e8539bc   # that commit's agents first, side by side

`--before REF` exports the commit with `git archive` (read-only) and runs this same script in
it first, so both sets of figures come from one run on the same machine.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import _ours_side as ours  # noqa: E402
from bench._heart_data import CONTRACT, Config, n_features  # noqa: E402
from bench._procs import MemorySampler  # noqa: E402
from bench._table import machine  # noqa: E402

MB = 1024 * 1024
TARGET_IDLE_MB = 250.0
RESULTS = Path(__file__).resolve().parent / "results"
LIBS = {"torch": "libtorch", "xgboost": "libxgboost"}


def loaded_libs(pid: int) -> list[str]:
    """Which of torch and XGBoost this process has imported (their native libraries mapped)."""
    try:
        maps = Path(f"/proc/{pid}/maps").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return []
    return [name for name, lib in LIBS.items() if lib in maps]


def wait_ready(fed: ours.OursFederation, timeout_s: float) -> float:
    """Seconds until every agent reported its warm-up (data validated and loaded)."""
    from flows.service_client import CoordinatorClient

    coord = CoordinatorClient(fed.url, token=fed.token_file.read_text().strip())
    started = time.monotonic()
    while True:
        silos = coord.silos("heart")
        if silos and all(s.ready_at is not None for s in silos):
            bad = [
                f"{s.name}: {s.ready.detail}" for s in silos if s.ready and not s.ready.validated
            ]
            if bad:
                raise RuntimeError(f"agents warmed up with unusable data: {bad}")
            return time.monotonic() - started
        for p in fed.procs:
            if p.popen.poll() is not None:
                raise RuntimeError(f"{p.name} exited ({p.popen.returncode}); see {p.log_path}")
        if time.monotonic() - started > timeout_s:
            raise RuntimeError(f"agents not ready within {timeout_s:.0f} s; see {fed.workspace}")
        time.sleep(0.2)


def tree_run(fed: ours.OursFederation, rounds: int, out: Path) -> None:
    """An XGBoost bagging run by the coordinator flow (in this process: not an agent's cost)."""
    from flows.coordinator import federated_training
    from schemas.specs import SecureAggregationSpec
    from schemas.tree_params import TreeSpec

    trees = TreeSpec.model_validate(
        {
            "kind": "xgboost",
            "mode": "bagging",
            "n_features": n_features(),
            "trees_per_round": 2,
            "params": {"max_depth": 3},
        }
    )
    result = federated_training(
        service_urls=[fed.url],
        admin_token_file=str(fed.token_file),
        federation="heart",
        dataset=CONTRACT,
        trees=trees,
        rounds=rounds,
        min_silos=4,
        round_deadline_s=600,
        output_dir=str(out),
        secure_aggregation=SecureAggregationSpec(enabled=False),
    )
    if not isinstance(result, dict):
        raise RuntimeError(f"the tree run did not complete: {result}")


def torch_run(fed: ours.OursFederation, rounds: int, timeout_s: float) -> None:
    """The peers' logistic regression with FedAvg, its coordinator as its own process."""
    proc, out = ours.run_config(fed, Config("logreg", "fedavg", False), rounds, "torch-")
    code = proc.wait(timeout_s)
    if code != 0 or not out.exists():
        log = (out.parent / "coordinator.log").read_text(errors="replace")[-3000:]
        raise RuntimeError(f"the PyTorch run failed ({code}):\n{log}")


def phase(fed: ours.OursFederation, name: str, work: object) -> dict:
    """Run `work()` while sampling the agents; their peak PSS and the libraries they map."""
    agents = {pid: n.removeprefix("silo agent ") for pid, n in fed.names.items() if "agent" in n}
    started = time.monotonic()
    with MemorySampler(list(agents)) as sampler:
        work()  # type: ignore[operator]
    peaks = {agents[pid]: v / MB for pid, v in sampler.peak_pss_by_root.items()}
    libs = {agents[pid]: loaded_libs(pid) for pid in agents}
    return {
        "phase": name,
        "seconds": time.monotonic() - started,
        "peak_pss_mb": peaks,
        "libs": libs,
    }


def flower_reference(path: Path) -> dict | None:
    """Median peak PSS of one Flower SuperNode with its ClientApp, as bench/peers.py recorded."""
    if not path.exists():
        return None
    report = json.loads(path.read_text())
    values = [
        v
        for o in report.get("outcomes", [])
        if o["system"] == "flower" and not o.get("warmup")
        for k, v in o["peak_pss_mb_by_process"].items()
        if k.startswith("supernode") and v > 0
    ]
    if not values:
        return None
    return {"median_mb": statistics.median(values), "n": len(values), "date": report.get("date")}


def verdicts(phases: dict[str, dict], flower: dict | None) -> list[tuple[str, float, float, bool]]:
    """(what, ours, target, met) for each target."""
    idle = max(
        v for k, p in phases.items() if k.startswith("idle") for v in p["peak_pss_mb"].values()
    )
    out = [("idle agent peak PSS MB (max of agents) < 250", idle, TARGET_IDLE_MB, idle < 250)]
    if flower and "torch" in phases:
        peak = statistics.median(phases["torch"]["peak_pss_mb"].values())
        out.append(
            ("agent peak PSS through a PyTorch run / Flower SuperNode+ClientApp < 1",
             peak / flower["median_mb"], 1.0, peak < flower["median_mb"])
        )  # fmt: skip
    return out


def print_report(report: dict) -> None:
    print(f"\nagent memory ({report['machine']}, {report['date']})")
    print(f"{'phase':<14} {'seconds':>8}  peak PSS MB per agent            torch/xgboost loaded")
    for p in report["phases"].values():
        peaks = " ".join(f"{v:4.0f}" for v in p["peak_pss_mb"].values())
        libs = sorted({lib for v in p["libs"].values() for lib in v})
        n = {lib: sum(lib in v for v in p["libs"].values()) for lib in libs}
        loaded = ", ".join(f"{lib} in {k} of {len(p['libs'])}" for lib, k in n.items()) or "none"
        print(f"{p['phase']:<14} {p['seconds']:8.1f}  {peaks:<32} {loaded}")
    if f := report["flower"]:
        print(
            f"Flower SuperNode+ClientApp: median {f['median_mb']:.0f} MB over {f['n']} peaks "
            f"(bench/peers.py, {f['date']})"
        )
    else:
        print("Flower SuperNode+ClientApp: no recorded figure (run bench/peers.py first)")
    for what, value, target, met in report["verdicts"]:
        print(f"{'MET' if met else 'MISSED':<6} {what}: {value:.2f} (target {target:g})")


def run_before(ref: str, argv: list[str], ws: Path) -> dict:
    """This script's figures for the agents of commit `ref` (its tree, this script)."""
    tree = ws / "before"
    tree.mkdir(parents=True)
    root = Path(__file__).resolve().parents[1]
    archive = subprocess.run(
        ["git", "-C", str(root), "archive", ref], check=True, capture_output=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(tree)], input=archive, check=True)
    shutil.copy(__file__, tree / "bench" / "agent_memory.py")
    out = ws / "before.json"
    args = [sys.executable, "bench/agent_memory.py", *argv, "--json", str(out)]
    # cwd first on sys.path: the agents it spawns (`python -m flows.cli`) run that commit's code
    subprocess.run(args + ["--workspace", str(ws / "before-ws")], cwd=tree, check=True)
    return {"ref": ref, **json.loads(out.read_text())}


def print_side_by_side(before: dict, after: dict) -> None:
    print(f"\nbefore ({before['ref']}) and after, max over agents of peak PSS MB")
    for name, p in after.items():
        old = before["phases"].get(name)
        if old:
            a, b = max(p["peak_pss_mb"].values()), max(old["peak_pss_mb"].values())
            print(f"  {name:<14} {b:6.0f} -> {a:6.0f}  ({a / b:.2f}x)")


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=2, help="rounds of each run")
    parser.add_argument("--idle-s", type=float, default=10.0, help="seconds sampled idle")
    parser.add_argument("--no-runs", action="store_true", help="the idle phase only")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds a phase may take")
    parser.add_argument("--prefect-url", default=None, help="reuse this Prefect API")
    parser.add_argument("--flower-json", type=Path, default=RESULTS / "peers.json")
    parser.add_argument("--json", type=Path, default=RESULTS / "agent_memory.json")
    parser.add_argument("--workspace", type=Path, default=None, help="keep logs here")
    parser.add_argument("--before", default=None, help="a git ref: its agents, measured first")
    args = parser.parse_args(argv)
    ws = args.workspace or Path(tempfile.mkdtemp(prefix="fedsilo-agent-memory-"))
    ws.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("DO_NOT_TRACK", "1")
    from silos.demo_data import heart_disease_silos

    started = time.time()
    phases: dict[str, dict] = {}
    ready_s: list[float] = []
    # two federations: agents that served a tree run must not carry its XGBoost into the
    # PyTorch run's figure, nor a PyTorch run's torch into the tree run's check
    runs = {"trees": lambda fed: tree_run(fed, args.rounds, ws / "trees")}
    runs["torch"] = lambda fed: torch_run(fed, args.rounds, args.timeout)
    before = None
    try:
        if args.before:
            shared = ["--rounds", str(args.rounds), "--idle-s", str(args.idle_s)]
            shared += ["--timeout", str(args.timeout), "--flower-json", str(args.flower_json)]
            shared += ["--no-runs"] if args.no_runs else []
            shared += ["--prefect-url", args.prefect_url] if args.prefect_url else []
            before = run_before(args.before, shared, ws)
        for name in [None] if args.no_runs else list(runs):
            fed = ours.start(ws / f"ours-{name or 'idle'}", heart_disease_silos(), args.prefect_url)
            try:
                ready_s.append(wait_ready(fed, args.timeout))
                label = f"idle ({name})" if name else "idle"
                phases[label] = phase(fed, label, lambda: time.sleep(args.idle_s))
                if name:
                    phases[name] = phase(fed, name, lambda fed=fed, name=name: runs[name](fed))
            finally:
                fed.stop()
    finally:
        if args.workspace is None:
            shutil.rmtree(ws, ignore_errors=True)
    flower = flower_reference(args.flower_json)
    report = {
        "benchmark": "agent-memory",
        "machine": machine(),
        "date": time.strftime("%Y-%m-%d %H:%M", time.localtime(started)),
        "rounds": args.rounds,
        "ready_s": ready_s,
        "load_after": os.getloadavg(),
        "phases": phases,
        "flower": flower,
        "verdicts": verdicts(phases, flower),
        "before": before,
    }
    print_report(report)
    if before:
        print_side_by_side(before, phases)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=1))
    print(f"\nfigures written to {args.json}")
    return report


if __name__ == "__main__":
    main()
