"""Load: N silos against one aggregation service on PostgreSQL, secure aggregation on.

    python bench/scale.py                          # N in 4, 16, 64; 10^6 parameters; 3 rounds
    python bench/scale.py --silos 4 16 --params 100000 --rounds 2   # a quick look
    python bench/scale.py --degree 16              # SecAgg+ graph (degree 16) instead of full
    python bench/scale.py --database-url postgresql+psycopg://...   # else FEDSILO_TEST_PG_URL,
                                                   # else a throwaway scripts/pg-test-server
    python bench/scale.py --silos 4 16 64 128 --replicas 2 --modes recheck notify
                                                   # before/after LISTEN/NOTIFY, side by side

Two service replicas by default (--replicas): `fedsilo aggregator serve` processes sharing the
database and workspace; silo workers are spread over them and the coordinator's round waits go
to the last one, so wake-ups cross processes (LISTEN/NOTIFY). --modes notify (the default:
long-polls woken by commits) and/or recheck (the service re-checks every 10 ms, as before);
service CPU is summed over the replicas. Prints MET/MISSED for service CPU and latency at most
linear in N, and for exact aggregates in every trial.

What runs: a real `fedsilo aggregator serve` process on 127.0.0.1 with a PostgreSQL database
(a fresh one per N when the role may create databases), the coordinator's HTTP calls (open,
wait for, and at the deadline close each round, as flows/coordinator.py does) from this
process, and N silos spread over --workers processes (bench/_scale_silos.py), one thread and
one signed `SiloClient` each. Every silo runs the agent's secure-aggregation path: poll for its
task, then silos/secure_round.py's advertise, share, masked_update (clip, weight, quantize,
mask: aggregation/secagg) + submit_masked with its signed ledger statement, unmask.

This benchmarks the service and the protocol, not learning: local training, the validation
gate and Prefect bookkeeping are skipped, and each silo's update is a fixed pseudo-random delta
(seeded by silo and round) that this process recomputes to check the result. The model is
logistic regression with --params weights (10^6 by default) starting from zeros, the strategy
FedAvg with server_lr 1, so model version r must equal the sum over rounds of the weighted
means of the clipped deltas, per coordinate within secure aggregation's quantization bound.
An update lost or counted twice would put a round's step (L2) as far from the exact mean as
that silo's whole weighted update; it must stay under half the smallest one (quantization
noise keeps it near 0.05 at N = 64). Each round's `aggregate` ledger entry must also name every
silo exactly once.

Printed per N: round latency (median and max over rounds), service CPU seconds per round
(psutil, user + system of the service process), PostgreSQL's CPU seconds per round (its
server processes, when FEDSILO_TEST_PG_DATA names the cluster, as scripts/pg-test-server
sets), the service's peak RSS, mean silo CPU per round (thread CPU time inside the protocol
steps), the exactness check, and the requests and SQL statements per silo per round, by
route and by operation, with the time spent on each (from the replicas' `/metrics`: a count
that grows with N points at a per-silo cost that is not constant). All N silos share this
machine's cores with the service, so wall latency includes their masking work; service CPU
is the service's own cost.
--poll-interval sets the service's long-poll re-check interval (FEDSILO_SERVICE_POLL_INTERVAL_S).

Measured 2026-11-26, 10^6 parameters, 2 rounds, on 2 cores shared with other benchmarks (load
average 20-35); every aggregate exact (bench/README.md has the full table):

       N  graph | latency s/round | service CPU s/round | PostgreSQL CPU s/round | peak RSS
       4   full |            17.4 |                 3.0 |                    1.1 |   434 MB
      16   full |            32.9 |                15.9 |                    6.0 |   661 MB
      64   full |           148.2 |                81.2 |                   25.5 |   965 MB
      64   k=16 |           113.0 |                71.0 |                   26.0 |   945 MB

Latency x8.5 from N = 4 to 64 (linear: x16), service CPU x27: its long-polls re-check every
10 ms per waiting silo, a cost of N x round time (see bench/README.md). Since issue 20 they
are woken by commits (LISTEN/NOTIFY across replicas): 2026-12-04, two replicas, 10^5
parameters, service CPU 0.27 / 0.24 / 0.48 / 0.59 s per silo per round at N = 4 / 16 / 64 /
128, exact; still superlinear past 16 (bench/README.md, "Issue 20"). 2026-12-06, SecAgg+
degree 16, median of 3 rounds, with the service's handlers on 8 threads: service CPU x30.6,
x30.2 and x34.3, latency x31.2, x32.4 and x33.3 from N = 4 to 128, in three runs (x36-x40
with anyio's 40 threads, alternating with them).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from flows.processes import TELEMETRY_OFF, start_service  # noqa: E402
from flows.service_client import CoordinatorClient  # noqa: E402
from schemas import tensors  # noqa: E402
from schemas.specs import ModelSpec, RunSpec, SecureAggregationSpec, param_shapes  # noqa: E402
from schemas.wire import RoundOpen, RunCreate, RunFinish  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _scale_infra import (  # noqa: E402
    ServiceProbe,
    free_port,
    fresh_database,
    postgres_cpu,
    request_counts,
    throwaway_postgres,
)
from _scale_report import TASKS, Trial, report  # noqa: E402
from _scale_silos import FEDERATION, n_examples_of, silo_delta, silo_name  # noqa: E402

os.environ.update(TELEMETRY_OFF)
SILOS_SCRIPT = Path(__file__).resolve().parent / "_scale_silos.py"
POLL_ENV = "FEDSILO_SERVICE_POLL_INTERVAL_S"
ADMIN_TOKEN = "scale-bench-admin-token"  # the replicas share it (and the workspace, the DB)
# service modes: long-polls woken by commits (LISTEN/NOTIFY), or the old re-check every 10 ms
MODES = {
    "notify": {},
    "recheck": {"FEDSILO_SERVICE_NOTIFY": "false", POLL_ENV: "0.01"},
}

# --- one trial -------------------------------------------------------------------------------


def run_trial(
    n: int,
    params: int,
    rounds: int,
    database_url: str,
    workspace: Path,
    *,
    degree: int | None = None,
    workers: int = 4,
    seed: int = 0,
    deadline_s: float = 600.0,
    replicas: int = 1,
    mode: str = "notify",
) -> Trial:
    """N silos, `rounds` secure rounds of a `params`-weight model against `replicas` service
    processes sharing the database and workspace; returns the figures."""
    trial = Trial(silos=n, params=params, degree=degree, replicas=replicas, mode=mode)
    workspace.mkdir(parents=True, exist_ok=True)
    env = {"FEDSILO_SERVICE_ADMIN_TOKEN": ADMIN_TOKEN, **MODES[mode]}
    services, urls = [], []
    probes: list[ServiceProbe] = []
    procs: list[subprocess.Popen[bytes]] = []
    try:  # a KeyboardInterrupt stops the workers and the services too
        for _ in range(replicas):  # one after the other: the first one migrates the database
            port = free_port()
            # a loaded machine can take over a minute to import and migrate
            services.append(start_service(workspace / "service", port, database_url, 180, env))
            urls.append(f"http://127.0.0.1:{port}")
        probes += [ServiceProbe(s.popen.pid) for s in services]
        coord = CoordinatorClient(urls[0], token=ADMIN_TOKEN, retry_for_s=60)
        # the coordinator's round waits go to the last replica: silos' answers to the others
        # must wake them across processes
        waiter = CoordinatorClient(urls[-1], token=ADMIN_TOKEN, retry_for_s=60)
        coord.create_federation(FEDERATION)
        outs = _start_workers(n, workers, urls, workspace, seed, procs)
        _approve_all(coord, n, procs)
        model = ModelSpec(kind="logreg", n_features=params - 1)  # `params` weights with the bias
        spec = RunSpec(
            federation=FEDERATION,
            dataset="heart_disease",
            model=model,
            rounds=rounds,
            min_silos=n,
            round_deadline_s=deadline_s,
            secure_aggregation=SecureAggregationSpec(degree=degree),
            federation_statistics=False,
        )
        run_id = coord.create_run(RunCreate(spec=spec)).run_id
        zeros = {name: np.zeros(shape, np.float32) for name, shape in param_shapes(model)}
        coord.put_initial_model(run_id, tensors.encode(zeros, {"version": "0"}))
        coord.start_run(run_id)
        for r in range(1, rounds + 1):
            for probe in probes:
                probe.peak = 0
            asked0 = request_counts(urls, ADMIN_TOKEN)
            cpu0, db0, t0 = _cpu(probes), postgres_cpu(), time.monotonic()
            trial.forced_closes += _run_round(coord, waiter, run_id, r, deadline_s, procs)
            trial.latency_s.append(time.monotonic() - t0)
            trial.service_cpu_s.append(_cpu(probes) - cpu0)
            _add_requests(trial, asked0, request_counts(urls, ADMIN_TOKEN), n * rounds)
            db1 = postgres_cpu()
            if db0 is not None and db1 is not None:
                trial.db_cpu_s.append(db1 - db0)
            peak = max(probe.peak for probe in probes)
            trial.peak_rss_mb = max(trial.peak_rss_mb, peak / 2**20)
        coord.finish_run(run_id, RunFinish(status="finished", final_model_version=rounds))
        silo_cpu = _join_workers(procs, outs, trial)
        trial.silo_cpu_s = silo_cpu / (n * rounds)
        _check(coord, run_id, spec.secure_aggregation, model, rounds, seed, trial)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        for probe in probes:
            probe.stop()
        for service in services:
            service.stop()
    return trial


def _add_requests(
    trial: Trial,
    before: dict[str, list[float]],
    after: dict[str, list[float]],
    per: int,
) -> None:
    """Adds this round's requests by route to the trial's, per silo per round (count, ms)."""
    for route, (count, seconds) in after.items():
        if route.endswith("/metrics"):  # this bench's own scrapes
            continue
        count0, seconds0 = before.get(route, [0.0, 0.0])
        mine = trial.requests.setdefault(route, [0.0, 0.0])
        mine[0] += (count - count0) / per
        mine[1] += 1000 * (seconds - seconds0) / per


def _cpu(probes: list[ServiceProbe]) -> float:
    return sum(probe.cpu() for probe in probes)


def _start_workers(
    n: int,
    workers: int,
    urls: list[str],
    workspace: Path,
    seed: int,
    procs: list[subprocess.Popen[bytes]],
) -> list[Path]:
    outs = []
    for w in range(min(workers, n)):
        spec = {
            "url": urls[w % len(urls)],  # each replica serves its share of the silos
            "indices": list(range(w, n, min(workers, n))),
            "workspace": str(workspace / "silos"),
            "seed": seed,
            "out": str(workspace / f"worker-{w}.json"),
        }
        spec_path = workspace / f"worker-{w}.spec.json"
        spec_path.write_text(json.dumps(spec))
        log = open(workspace / f"worker-{w}.log", "ab")  # noqa: SIM115 - the child owns it
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        procs.append(
            subprocess.Popen(
                [sys.executable, str(SILOS_SCRIPT), str(spec_path)],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
            )
        )
        outs.append(workspace / f"worker-{w}.json")
    return outs


def _approve_all(coord: CoordinatorClient, n: int, procs: list[subprocess.Popen[bytes]]) -> None:
    deadline = time.monotonic() + 300
    while len(pending := [s.name for s in coord.silos(FEDERATION) if s.status == "pending"]) < n:
        if any(p.poll() not in (None, 0) for p in procs) or time.monotonic() > deadline:
            raise RuntimeError(f"only {len(pending)} of {n} silos enrolled; see worker-*.log")
        time.sleep(0.2)
    for name in pending:
        coord.approve(FEDERATION, name)


def _run_round(
    coord: CoordinatorClient,
    waiter: CoordinatorClient,
    run_id: str,
    number: int,
    deadline_s: float,
    procs: list[subprocess.Popen[bytes]],
) -> int:
    """flows.coordinator.run_round without Prefect: open, wait, force at the deadline."""
    coord.open_round(run_id, RoundOpen(round=number, kind="train", deadline_s=deadline_s))
    deadline, forced = time.monotonic() + deadline_s, 0
    while True:
        if any(p.poll() is not None for p in procs):
            raise RuntimeError(f"a silo worker exited during round {number}; see worker-*.log")
        remaining = deadline - time.monotonic()
        out = waiter.wait_round(run_id, number, wait_s=max(0.0, min(remaining, 5.0)))
        if out.status != "open":
            break
        if remaining <= 0:
            coord.close_round(run_id, number)
            forced += 1
            deadline = time.monotonic() + deadline_s
    if out.status != "aggregated":
        raise RuntimeError(f"round {number} ended {out.status}: {out.reason}")
    return forced


def _join_workers(procs: list[subprocess.Popen[bytes]], outs: list[Path], trial: Trial) -> float:
    total = 0.0
    steps: list[tuple[int, str, float, float]] = []
    for p, out in zip(procs, outs, strict=True):
        try:
            p.wait(120)
        except subprocess.TimeoutExpired:
            trial.problems.append(f"worker {out.stem} did not exit after the run ended")
            continue
        if not out.exists():
            trial.problems.append(f"worker {out.stem} exited {p.returncode} without results")
            continue
        result = json.loads(out.read_text())
        for i, err in result["errors"].items():
            trial.problems.append(f"{silo_name(int(i))}: {err}")
        total += sum(sum(per_round.values()) for per_round in result["cpu"].values())
        steps += [tuple(step) for per_silo in result["steps"].values() for step in per_silo]
    trial.stage_span_s = _stage_spans(steps)
    return total


def _stage_spans(steps: list[tuple[int, str, float, float]]) -> dict[str, float]:
    """Per task type, the median over rounds of first silo's start to last silo's end."""
    spans: dict[str, list[float]] = {}
    for kind in TASKS:
        for r in sorted({step[0] for step in steps}):
            mine = [step for step in steps if step[0] == r and step[1] == kind]
            if mine:
                span = max(s[3] for s in mine) - min(s[2] for s in mine)
                spans.setdefault(kind, []).append(span)
    return {kind: statistics.median(v) for kind, v in spans.items()}


def _check(
    coord: CoordinatorClient,
    run_id: str,
    sa: SecureAggregationSpec,
    model: ModelSpec,
    rounds: int,
    seed: int,
    trial: Trial,
) -> None:
    """Every model version equals the running sum of the exact weighted means."""
    from schemas.secagg.quantize import Quantizer
    from silos.secure_round import clip_l2

    n = trial.silos
    weights = np.array([n_examples_of(i) for i in range(n)], dtype=np.float64)
    weights /= weights.sum()
    # per round the weighted sum of n quantized vectors is within n / scale of the exact one
    # per coordinate (schemas/secagg/quantize.py); float32 storage adds an ulp per round
    step = n / Quantizer(clip=sa.clip, n_summands=n, bits=sa.bits).scale
    expected = np.zeros(model.n_features + 1)
    previous = expected.copy()  # model version r - 1
    trial.max_error, trial.error_bound, trial.l2_ratio = 0.0, 0.0, 0.0
    for r in range(1, rounds + 1):
        parts = [
            weights[i] * clip_l2(silo_delta(seed, i, r, expected.size).astype(np.float64), sa.clip)
            for i in range(n)
        ]
        mean = np.sum(parts, axis=0)
        expected += mean
        got, _ = tensors.decode_expected(coord.download_model(run_id, r), param_shapes(model))
        flat = np.concatenate([a.ravel() for a in got]).astype(np.float64)
        trial.max_error = max(trial.max_error, float(np.abs(flat - expected).max()))
        trial.error_bound = r * step + r * float(np.abs(expected).max()) * 2.0**-23
        # this round's step lost or doubled a silo's part if it is that far from the exact mean
        smallest = min(float(np.linalg.norm(p)) for p in parts)
        step_error = float(np.linalg.norm(flat - previous - mean))
        trial.l2_ratio = max(trial.l2_ratio, step_error / smallest)
        previous = flat
    aggregates = [json.loads(e.payload) for e in coord.ledger(run_id) if e.kind == "aggregate"]
    names = sorted(silo_name(i) for i in range(n))
    trial.contributors_ok = len(aggregates) == rounds and all(
        sorted(c["silo"] for c in a["contributors"]) == names for a in aggregates
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--silos", type=int, nargs="+", default=[4, 16, 64])
    parser.add_argument("--params", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--degree", type=int, default=None, help="SecAgg+ degree (default: full)")
    parser.add_argument("--workers", type=int, default=4, help="silo worker processes")
    parser.add_argument("--database-url", default=os.environ.get("FEDSILO_TEST_PG_URL", ""))
    parser.add_argument("--workspace", type=Path, default=None)
    parser.add_argument("--poll-interval", type=float, default=None, help="service's, seconds")
    parser.add_argument("--replicas", type=int, default=2, help="service processes, one database")
    parser.add_argument(
        "--modes",
        nargs="+",
        choices=sorted(MODES),
        default=["notify"],
        help="service long-polls: woken by commits (notify), re-check every 10 ms (recheck, "
        "as before LISTEN/NOTIFY); several run side by side per N",
    )
    args = parser.parse_args()
    if args.poll_interval is not None:  # the service process reads it from its environment
        os.environ[POLL_ENV] = str(args.poll_interval)
    trials = []
    with contextlib.ExitStack() as stack:
        if not args.database_url:
            print("no --database-url or FEDSILO_TEST_PG_URL: starting scripts/pg-test-server")
            args.database_url = stack.enter_context(throwaway_postgres())
        tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix="fedsilo-scale-"))
        for n in args.silos:
            for mode in args.modes:
                ws = (args.workspace or Path(tmp)) / f"n{n}-{mode}"
                with fresh_database(args.database_url) as db:
                    trial = run_trial(
                        n,
                        args.params,
                        args.rounds,
                        db,
                        ws,
                        degree=args.degree,
                        workers=args.workers,
                        replicas=args.replicas,
                        mode=mode,
                    )
                trials.append(trial)
                print(json.dumps(asdict(trial)), flush=True)
    if not report(trials):
        sys.exit(1)


if __name__ == "__main__":
    main()
