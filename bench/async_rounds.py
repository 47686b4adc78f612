"""Asynchronous (FedBuff) rounds against synchronous FedAvg with one silo five times slower.

The real deployment on 127.0.0.1: a Prefect server, the aggregation service, one silo agent
process per UCI hospital (four), and the `federated_training` coordinator flow in this process.
"Five times slower" means the `--slow` hospital's *round* takes 5x the others': a silo's round
time is from the round's opening to the service receiving its update (`bench._straggler`), and
holds the task hand-out, Prefect tasks, validation gate, training and the secure stages before
the masked one, most of which is fixed work, not training. So, per mode, a 3-round warm-up run
measures the fast silos' round time R (rounds 2-3, median), the slow agent is restarted with a
training delay (``FEDSILO_BENCH_TRAIN_DELAY_S``, a real sleep inside its round) of (5-1) x R,
and a one-round run absorbs its new cold start. The ratio actually observed in the sync run is
printed. `--delay D` overrides the calibration: fast silos wait D s, the slow one 5D s. The same
federation then trains the heart demo's logistic regression twice per mode:

- sync: FedAvg, `--rounds` rounds, every round waits for all four silos;
- async: buffers of K=3 (`RunSpec.asynchronous`), staleness weight 1/sqrt(1+t), as many
  buffers as it takes to apply the same number of updates (ceil(rounds * 4 / 3)).

Each global model version is scored on the four hospitals' pooled holdouts (the rows the agents
hold out, split and encoded as they do: `bench._heart_data.silo_arrays`). Time to target = the
close of the first round whose model reaches `--target` accuracy, from the opening of round 1
(Prefect start-up and the agents' readiness wait are the same for both and left out; the
warm-up runs take the agents' cold start out of both). Prints MET/MISSED for the issue's
targets: async at least 2x faster, final accuracy within 0.01 of sync. `--modes plain,secure`
runs both modes on one deployment, side by side (`--secure` = `--modes secure`); secure: sync
rounds run the protocol among all four silos, each async buffer among its cohort of K ready
silos (`engines/async_secure.py`), the demo's settings.

    .venv/bin/python bench/async_rounds.py [--rounds 20] [--modes plain,secure] [--delay D]
        [--slow hungary] [--target 0.80]
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from bench import _straggler as straggler  # noqa: E402
from bench._heart_data import CONTRACT, n_features, silo_arrays  # noqa: E402
from bench._ours_side import _silo_toml  # noqa: E402
from bench._procs import HOST, free_port  # noqa: E402
from flows.processes import (  # noqa: E402
    TELEMETRY_OFF,
    Proc,
    base_env,
    spawn,
    start_prefect_server,
    start_service,
)

HOSPITALS = ("cleveland", "hungary", "va_long_beach", "switzerland")
SLOWDOWN = 5.0
K = 3
WARMUP_ROUNDS = 3  # the calibration run; round 1 pays the agents' imports and is left out


@dataclass
class Deployment:
    procs: list[Proc]
    agents: dict[str, Proc]
    url: str
    token_file: Path
    prefect_url: str
    workspace: Path

    def spawn_agent(self, name: str, delay: float) -> None:
        """(Re)start silo `name`'s agent with a training delay of `delay` seconds; it keeps
        its folder, keys and approval, so the next run simply finds it serving."""
        from silos.bench_delay import ENV

        if name in self.agents:
            self.agents[name].stop()
        folder = self.workspace / "silos" / name
        env = base_env(PREFECT_API_URL=self.prefect_url, **{ENV: str(delay)})
        config = folder / "silo.toml"
        args = [sys.executable, "-m", "flows.cli", "silo", "start", "--config", str(config)]
        self.agents[name] = spawn(f"silo agent {name}", args, folder / "agent.log", env)

    def stop(self) -> None:
        for p in [*self.agents.values(), *reversed(self.procs)]:
            p.stop()


def start(workspace: Path, delays: dict[str, float]) -> Deployment:
    """Prefect, the service and four agents, each with its training delay."""
    from flows.contract_publish import publish_file
    from flows.service_client import CoordinatorClient
    from schemas.contracts.loader import CONTRACTS_DIR
    from silos.demo_data import heart_disease_silos

    os.environ.update(TELEMETRY_OFF)
    procs: list[Proc] = []
    prefect_port, service_port = free_port(), free_port()
    procs.append(start_prefect_server(workspace / "prefect", prefect_port))
    prefect_url = f"http://{HOST}:{prefect_port}/api"
    os.environ["PREFECT_API_URL"] = prefect_url  # the coordinator flow in this process
    procs.append(start_service(workspace / "service", service_port))
    url = f"http://{HOST}:{service_port}"
    token_file = workspace / "service" / "admin.token"
    dep = Deployment(procs, {}, url, token_file, prefect_url, workspace)
    coord = CoordinatorClient(url, token=token_file.read_text().strip())
    coord.create_federation("heart")
    publish_file(coord, "heart", CONTRACTS_DIR / f"{CONTRACT}.toml", workspace / "contract.pem")
    for name, frame in heart_disease_silos().items():
        folder = workspace / "silos" / name
        folder.mkdir(parents=True)
        frame.to_csv(folder / "data.csv", index=False)
        (folder / "silo.toml").write_text(_silo_toml(name, url, prefect_url))
        dep.spawn_agent(name, delays[name])
    deadline = time.monotonic() + 600
    while len([s for s in coord.silos("heart") if s.status == "pending"]) < len(dep.agents):
        if time.monotonic() > deadline:
            dep.stop()
            raise RuntimeError("agents did not enrol within 600 s; see silos/*/agent.log")
        time.sleep(0.2)
    for name in dep.agents:
        coord.approve("heart", name)
    return dep


def pooled_holdout() -> tuple[np.ndarray, np.ndarray]:
    """The four hospitals' holdouts, split and encoded as the agents do (`bench._heart_data`)."""
    parts = silo_arrays().values()
    return np.concatenate([p.X_test for p in parts]), np.concatenate([p.y_test for p in parts])


def train(
    url: str, token_file: Path, rounds: int, asynchronous: bool, out: Path, secure: bool = False
) -> str:
    """One run of the coordinator flow; returns its run id."""
    from flows.coordinator import federated_training
    from flows.demo_config import DEMO_SECURE_AGGREGATION, heart_demo_spec
    from schemas.specs import AsyncSpec, SecureAggregationSpec

    spec = heart_demo_spec(n_features())
    result = federated_training(
        service_urls=[url],
        admin_token_file=str(token_file),
        federation="heart",
        dataset=CONTRACT,
        model=spec.model,
        strategy=spec.strategy,
        training=spec.training,
        rounds=rounds,
        min_silos=K if asynchronous else 4,
        round_deadline_s=600.0,
        output_dir=str(out),
        secure_aggregation=DEMO_SECURE_AGGREGATION
        if secure
        else SecureAggregationSpec(enabled=False),
        asynchronous=AsyncSpec(buffer_size=K) if asynchronous else None,
    )
    return str(result["run_id"])  # type: ignore[index]


def curve(url: str, token_file: Path, run_id: str, X: np.ndarray, y: np.ndarray) -> dict:
    """Per aggregated round: seconds since round 1 opened, pooled accuracy; silos' train s."""
    from flows.demo_config import heart_demo_spec
    from flows.service_client import CoordinatorClient
    from schemas import tensors
    from schemas.specs import param_shapes
    from silos.trainer import evaluate

    coord = CoordinatorClient(url, token=token_file.read_text().strip())
    model = heart_demo_spec(n_features()).torch_model
    rounds = [r for r in coord.rounds(run_id) if r.kind == "train"]
    t0 = rounds[0].opened_at
    points = []
    train_s: dict[str, list[float]] = {}
    for r in rounds:
        for st in r.silos:
            if st.train_seconds is not None:
                train_s.setdefault(st.silo, []).append(st.train_seconds)
        if r.status != "aggregated" or r.model_version is None or r.closed_at is None:
            continue
        params, _ = tensors.decode_expected(
            coord.download_model(run_id, r.model_version), param_shapes(model)
        )
        acc = evaluate(model, params, X, y).accuracy or 0.0
        points.append(((r.closed_at - t0).total_seconds(), acc))
    return {"points": points, "train_s": {k: statistics.median(v) for k, v in train_s.items()}}


def time_to(points: list[tuple[float, float]], target: float) -> float | None:
    return next((t for t, acc in points if acc >= target), None)


def warm_up(dep: Deployment, secure: bool, slow: str, delay: float | None) -> dict:
    """Warm the agents up for one mode and, unless `delay` fixes it, calibrate the slow silo.

    Calibrated: a WARMUP_ROUNDS synchronous run times the fast silos' rounds (round 1 pays
    imports and is left out), the slow agent is restarted with a delay that makes its round
    SLOWDOWN x theirs, and a one-round run absorbs its new cold start."""
    db = dep.workspace / "service" / "service.db"
    models = dep.workspace / "models"
    if delay is not None:  # the explicit override: the delays the agents were started with
        train(dep.url, dep.token_file, 1, False, models, secure)
        return {"fast_s": None, "delay": SLOWDOWN * delay}
    run_id = train(dep.url, dep.token_file, WARMUP_ROUNDS, False, models, secure)
    fast_s = straggler.fast_round_seconds(
        straggler.silo_round_seconds(db, run_id), slow, first_round=2
    )
    slow_s = straggler.slow_delay(fast_s, SLOWDOWN)
    dep.spawn_agent(slow, slow_s)
    train(dep.url, dep.token_file, 1, False, models, secure)
    return {"fast_s": fast_s, "delay": slow_s}


def run_mode(
    dep: Deployment, args: argparse.Namespace, secure: bool, X: np.ndarray, y: np.ndarray
) -> dict:
    """Calibrate, then the synchronous and the asynchronous run; their curves and figures."""
    cal = warm_up(dep, secure, args.slow, args.delay)
    models = dep.workspace / "models"
    buffers = math.ceil(args.rounds * len(HOSPITALS) / K)
    runs = {
        "sync": train(dep.url, dep.token_file, args.rounds, False, models, secure),
        "async": train(dep.url, dep.token_file, buffers, True, models, secure),
    }
    db = dep.workspace / "service" / "service.db"
    sync_rounds = straggler.silo_round_seconds(db, runs["sync"])
    cal["ratio"] = straggler.observed_ratio(sync_rounds, args.slow)
    cal["fast_sync_s"] = straggler.fast_round_seconds(sync_rounds, args.slow)
    return {
        "cal": cal,
        "curves": {k: curve(dep.url, dep.token_file, rid, X, y) for k, rid in runs.items()},
    }


def report_mode(mode: str, res: dict, args: argparse.Namespace) -> dict:
    """Print one mode's table and curves; its MET/MISSED figures."""
    cal = res["cal"]
    how = "calibrated" if cal["fast_s"] is not None else f"--delay {args.delay}"
    print(f"\n== {mode}: heart, 4 silos, {args.slow} {SLOWDOWN:g}x slower ({how})")
    if cal["fast_s"] is not None:
        print(
            f"calibration: fast silos' round {cal['fast_s']:.2f} s (warm-up rounds 2-"
            f"{WARMUP_ROUNDS}), slow silo's training delay ({SLOWDOWN:g}-1) x that = "
            f"{cal['delay']:.2f} s"
        )
    else:
        print(f"training delay: fast {args.delay} s, slow {cal['delay']:.2f} s")
    print(
        f"observed in the sync run: fast silos' round {cal['fast_sync_s']:.2f} s, slow/fast "
        f"round-time ratio {cal['ratio']:.2f}x (median over rounds)"
    )
    print(f"{'mode':6} {'rounds':>6} {'wall s':>7} {'final acc':>9} {'t->target s':>11}  train s")
    out = {}
    for run, r in res["curves"].items():
        pts = r["points"]
        hit = time_to(pts, args.target)
        out[run] = (hit, pts[-1][1])
        med = " ".join(f"{k}={v:.2f}" for k, v in sorted(r["train_s"].items()))
        hit_s = f"{hit:.1f}" if hit is not None else "never"
        print(f"{run:6} {len(pts):>6} {pts[-1][0]:>7.1f} {pts[-1][1]:>9.4f} {hit_s:>11}  {med}")
    for run, r in res["curves"].items():  # the curves: seconds:accuracy per aggregated round
        print(f"{run} curve: " + " ".join(f"{s:.0f}:{acc:.3f}" for s, acc in r["points"]))
    (t_sync, a_sync), (t_async, a_async) = out["sync"], out["async"]
    speedup = t_sync / t_async if t_sync and t_async else None
    return {"speedup": speedup, "a_sync": a_sync, "a_async": a_async, **cal}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=20, help="synchronous rounds")
    parser.add_argument(
        "--delay",
        type=float,
        default=None,
        help="override: fast silos' training delay s, the slow one's 5x that (default: "
        "calibrate the slow silo's round to 5x the fast silos' measured round)",
    )
    parser.add_argument("--slow", default="hungary", choices=HOSPITALS)
    parser.add_argument("--target", type=float, default=0.80, help="pooled holdout accuracy")
    parser.add_argument("--workspace", type=Path, default=None)
    parser.add_argument("--secure", action="store_true", help="same as --modes secure")
    parser.add_argument(
        "--modes", default="plain", help="plain, secure or plain,secure (one deployment)"
    )
    args = parser.parse_args()
    modes = ["secure"] if args.secure else [m.strip() for m in args.modes.split(",")]
    if not modes or any(m not in ("plain", "secure") for m in modes):
        parser.error(f"--modes {args.modes!r}: give plain, secure or plain,secure")
    workspace = args.workspace or Path(tempfile.mkdtemp(prefix="fedsilo-async-"))
    fast = args.delay or 0.0
    delays = {h: fast * (SLOWDOWN if h == args.slow else 1.0) for h in HOSPITALS}
    dep = start(workspace, delays)
    try:
        X, y = pooled_holdout()
        results = {m: run_mode(dep, args, m == "secure", X, y) for m in modes}
    finally:
        dep.stop()
    figures = {m: report_mode(m, r, args) for m, r in results.items()}
    print(f"\n== summary: time to pooled accuracy {args.target}, {args.rounds} sync rounds")
    print(
        f"{'mode':6} {'slow delay s':>12} {'slow/fast':>9} {'speed-up':>8} {'>=2x':>6} "
        f"{'final acc sync/async':>21} {'<=0.01':>6}"
    )
    for mode, f in figures.items():
        sp = f["speedup"]
        fast_ok = sp is not None and sp >= 2.0
        same = abs(f["a_async"] - f["a_sync"]) <= 0.01
        sp_s = f"{sp:.2f}x" if sp is not None else "never"
        accs = f"{f['a_sync']:.4f} / {f['a_async']:.4f}"
        print(
            f"{mode:6} {f['delay']:>12.2f} {f['ratio']:>8.2f}x {sp_s:>8} "
            f"{'MET' if fast_ok else 'MISSED':>6} {accs:>21} {'MET' if same else 'MISSED':>6}"
        )
    print(f"workspace: {workspace}")


if __name__ == "__main__":
    main()
