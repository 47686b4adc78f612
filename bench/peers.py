"""fedsilo and Flower side by side on the same work, on this machine, in one run.

The four-hospital heart-disease task (fedsilo's demo: the same rows, split and features from
fedsilo's pipeline, the same initial parameters, 1 local epoch of SGD, batch 32, lr 0.1; MLP
hidden width 32; FedAdam server lr 0.05, betas 0.9/0.99, tau 1e-3) for logistic regression and
the MLP, FedAvg and FedAdam, secure aggregation off and on (fedsilo's own vs Flower's SecAgg+,
every hospital sharing its keys with every other, threshold 3 of 4). Each system runs as its
real deployment on 127.0.0.1: fedsilo's Prefect server, aggregation service, four silo agents
and coordinator flow; Flower's SuperLink, four SuperNodes and `flwr run` (see bench/README.md
for the measuring method). The XGBoost bagging comparison (five credit banks) is
`bench/peers_xgboost.py`.

    python bench/peers.py                 # all 8 configurations, 20 rounds (long: Flower's
                                          # deployment engine polls every 3 s)
    python bench/peers.py --quick         # smoke: logreg/FedAvg plain and secure, 2 rounds
    python bench/peers.py --rounds 5 --configs logreg/fedavg/plain,logreg/fedavg/secagg
    python bench/peers.py --no-flower     # ours only (what the smoke test runs without Flower)

Prints one table per figure with ours, Flower's and the ratio ours / Flower (below 1: ours is
smaller or faster; for accuracy and AUC above 1 is better), and writes the figures as JSON
(`--json`, default bench/results/peers.json) for `bench/_report.py`.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import _flower_side as flower  # noqa: E402
from bench import _ours_side as ours  # noqa: E402
from bench._heart_compare import (  # noqa: E402
    Outcome,
    flower_finish,
    measure,
    ours_finish,
    ours_wait,
)
from bench._heart_data import Config, export  # noqa: E402
from bench._procs import MemorySampler, terminate  # noqa: E402
from bench._table import machine, print_comparison  # noqa: E402
from silos.demo_data import heart_disease_silos  # noqa: E402

ALL = [
    Config(m, s, sec)
    for m in ("logreg", "mlp")
    for s in ("fedavg", "fedadam")
    for sec in (False, True)
]
QUICK = [Config("logreg", "fedavg", False), Config("logreg", "fedavg", True)]
RESULTS = Path(__file__).resolve().parent / "results"


def parse_configs(text: str) -> list[Config]:
    out = []
    for label in text.split(","):
        parts = label.strip().split("/")
        if (
            len(parts) != 3
            or parts[0] not in ("logreg", "mlp")
            or parts[1] not in ("fedavg", "fedadam")
            or parts[2] not in ("plain", "secagg")
        ):
            raise SystemExit(
                f"bad configuration {label!r}: use model/strategy/secure, e.g. mlp/fedadam/secagg"
            )
        out.append(Config(parts[0], parts[1], parts[2] == "secagg"))
    return out


# one round before the measured runs: a deployment's processes are long-lived, so the first
# run's imports (Great Expectations at the silos, torch in the processes) are not per-run costs
WARMUP = Config("logreg", "fedavg", False)


def _progress(o: Outcome) -> None:
    note = " (warm-up, 1 round)" if o.warmup else ""
    print(f"  {o.system:<8} {o.config}{note}: {o.wall_s:.1f} s", flush=True)


def run_ours(
    ws: Path,
    configs: list[Config],
    rounds: int,
    tests: dict,
    timeout_s: float,
    warmup: bool = True,
    prefect_url: str | None = None,
    done: Callable[[Outcome], None] = lambda o: None,
) -> list[Outcome]:
    frames = heart_disease_silos()
    hospitals = list(frames)
    fed = ours.start(ws / "ours", frames, prefect_url)
    outcomes = []
    try:
        with MemorySampler(fed.pids) as sampler:
            runs = [WARMUP, *configs] if warmup else configs
            for i, config in enumerate(runs):
                n = 1 if warmup and i == 0 else rounds
                outcome, proc, out = measure(
                    "fedsilo",
                    config,
                    lambda c=config, n=n, i=i: ours.run_config(fed, c, n, f"{i:02d}"),
                    ours_wait(timeout_s),
                    sampler,
                    fed.pids,
                    fed.relay,
                    hospitals,
                    fed.names,
                    "coordinator flow",
                )
                ours_finish(outcome, config, out, tests)
                outcome.warmup = warmup and i == 0
                outcomes.append(outcome)
                done(outcome)
                _progress(outcome)
    finally:
        fed.stop()
    return outcomes


def run_flower(
    ws: Path,
    data: Path,
    configs: list[Config],
    rounds: int,
    tests: dict,
    timeout_s: float,
    warmup: bool = True,
    done: Callable[[Outcome], None] = lambda o: None,
) -> list[Outcome]:
    hospitals = list(tests)
    fed = flower.start(ws / "flower", data, hospitals)
    outcomes = []
    try:
        with MemorySampler(fed.pids) as sampler:
            runs = [WARMUP, *configs] if warmup else configs
            for i, config in enumerate(runs):
                n = 1 if warmup and i == 0 else rounds
                server: dict = {}

                def wait(proc, out, server=server):  # type: ignore[no-untyped-def]
                    server.update(flower.wait_result(proc, out, timeout_s))

                outcome, proc, out = measure(
                    "flower",
                    config,
                    lambda c=config, n=n, i=i: flower.run_config(
                        fed, c, n, data, len(hospitals), f"{i:02d}"
                    ),
                    wait,
                    sampler,
                    fed.pids,
                    fed.relay,
                    hospitals,
                    fed.names,
                    "flwr run",
                )
                terminate([proc])  # `flwr run --stream` may still be streaming logs
                flower_finish(outcome, config, server, out, tests)
                outcome.warmup = warmup and i == 0
                outcomes.append(outcome)
                done(outcome)
                _progress(outcome)
    finally:
        fed.stop()
    return outcomes


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--quick", action="store_true", help="logreg/FedAvg plain and secure, 2 rounds"
    )
    parser.add_argument(
        "--rounds", type=int, default=None, help="training rounds (default 20; 2 with --quick)"
    )
    parser.add_argument("--configs", default="", help="comma-separated model/strategy/plain|secagg")
    parser.add_argument("--no-flower", action="store_true", help="run fedsilo's side only")
    parser.add_argument("--no-ours", action="store_true", help="run Flower's side only")
    parser.add_argument("--timeout", type=float, default=3600, help="seconds one run may take")
    parser.add_argument("--json", type=Path, default=RESULTS / "peers.json")
    parser.add_argument(
        "--no-warmup", action="store_true", help="skip the unmeasured 1-round run after start-up"
    )
    parser.add_argument(
        "--prefect-url", default=None, help="reuse this Prefect API (default: start one)"
    )
    parser.add_argument("--workspace", type=Path, default=None, help="keep logs here")
    args = parser.parse_args(argv)
    configs = parse_configs(args.configs) if args.configs else (QUICK if args.quick else ALL)
    rounds = args.rounds or (2 if args.quick else 20)
    ws = args.workspace or Path(tempfile.mkdtemp(prefix="fedsilo-peers-"))
    ws.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("DO_NOT_TRACK", "1")
    why_not = None if args.no_flower else flower.available()
    if why_not:
        print(f"Flower skipped: {why_not}")
    started = time.time()
    results: list[Outcome] = []

    def report_of(complete: bool) -> dict:
        return {
            "benchmark": "peers-heart",
            "machine": machine(),
            "date": time.strftime("%Y-%m-%d %H:%M", time.localtime(started)),
            "rounds": rounds,
            "load_after": os.getloadavg(),
            "flower_skipped": why_not if not args.no_flower else "--no-flower",
            "complete": complete,
            "outcomes": [o.to_json() for o in results],
        }

    def save(outcome: Outcome) -> None:  # a long run that is cut short keeps what it measured
        results.append(outcome)
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report_of(False), indent=1))

    try:
        arrays = export(ws / "data")
        tests = {h: (a.X_test, a.y_test) for h, a in arrays.items()}
        if not args.no_ours:
            print(f"fedsilo: {len(configs)} configurations, {rounds} rounds", flush=True)
            run_ours(
                ws, configs, rounds, tests, args.timeout, not args.no_warmup, args.prefect_url, save
            )
        if not args.no_flower and not why_not:
            print(f"flower: {len(configs)} configurations, {rounds} rounds", flush=True)
            run_flower(
                ws, ws / "data", configs, rounds, tests, args.timeout, not args.no_warmup, save
            )
    finally:
        if args.workspace is None:
            shutil.rmtree(ws, ignore_errors=True)
    report = report_of(True)
    print_comparison(report)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=1))
    print(f"\nfigures written to {args.json}")
    return report


if __name__ == "__main__":
    main()
