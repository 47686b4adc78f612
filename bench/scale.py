"""Load: N silos against one aggregation service on PostgreSQL, secure aggregation on.

    python bench/scale.py                          # N in 4, 16, 64; 10^6 parameters; 3 rounds
    python bench/scale.py --silos 4 16 --params 100000 --rounds 2   # a quick look
    python bench/scale.py --degree 16              # SecAgg+ graph (degree 16) instead of full
    python bench/scale.py --database-url postgresql+psycopg://...   # else FEDSILO_TEST_PG_URL

What runs: a real `fedsilo aggregator serve` process on 127.0.0.1 with a PostgreSQL database
(a fresh one per N when the role may create databases), the coordinator's HTTP calls (open,
wait for, and at the deadline close each round, as flows/coordinator.py does) from this
process, and N silos spread over a few worker processes (this script with --worker), one
thread and one signed `SiloClient` each. Every silo runs the agent's secure-aggregation path:
poll for its task, then silos/secure_round.py's advertise, share, masked_update (clip, weight,
quantize, mask: aggregation/secagg) + submit_masked with its signed ledger statement, unmask.

This benchmarks the service and the protocol, not learning: local training, the validation
gate and Prefect bookkeeping are skipped, and each silo's update is a fixed pseudo-random delta
(seeded by silo and round) that this process recomputes to check the result. The model is
logistic regression with --params weights (10^6 by default) starting from zeros, the strategy
FedAvg with server_lr 1, so model version r must equal the sum over rounds of the weighted
means of the clipped deltas to within secure aggregation's quantization bound: an update lost
or counted twice moves a coordinate by ~1/N of its size, thousands of times that bound. Each
round's `aggregate` ledger entry must also name every silo exactly once.

Printed per N: round latency (median and max over rounds), service CPU seconds per round
(psutil, user + system of the service process), the service's peak RSS, mean silo CPU per
round (thread CPU time inside the protocol steps), and the exactness check. All N silos share
this machine's cores with the service, so wall latency includes their masking work (N silos x
their neighbours' pairwise masks); service CPU is the service's own cost.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from aggregation.client import CoordinatorClient, SiloClient  # noqa: E402
from aggregation.exceptions import ServiceRejected  # noqa: E402
from flows.processes import TELEMETRY_OFF, start_service  # noqa: E402
from schemas import tensors  # noqa: E402
from schemas.specs import ModelSpec, RunSpec, SecureAggregationSpec, param_shapes  # noqa: E402
from schemas.wire import RoundOpen, RunCreate, RunFinish, Task  # noqa: E402

os.environ.update(TELEMETRY_OFF)

FEDERATION = "scale"
DELTA_STD = 0.004  # per coordinate: the L2 norm of 10^6 of them (~4) stays under clip 10
POLL_WAIT_S = 25.0


def silo_name(i: int) -> str:
    return f"silo-{i:03d}"


def n_examples_of(i: int) -> int:
    return 100 + 7 * i  # distinct example counts: the weighted mean is not a plain mean


def silo_delta(seed: int, index: int, round_num: int, dim: int) -> np.ndarray:
    """Silo `index`'s update in round `round_num` (float32, as the agent's deltas are)."""
    rng = np.random.default_rng([seed, index, round_num])
    return rng.normal(0.0, DELTA_STD, dim).astype(np.float32)


# --- silo side (worker processes) ----------------------------------------------------------


def serve_silo(
    client: SiloClient, workspace: Path, index: int, seed: int, cpu: dict[int, float]
) -> None:
    """The agent's loop for one secure run: wait for approval, then every task until the run
    ends. `cpu` collects thread CPU seconds per round spent in the protocol steps."""
    from silos import secure_round

    while not _approved(client):
        time.sleep(0.5)
    run_id: str | None = None
    while True:
        work = client.next_task(wait_s=POLL_WAIT_S, run_id=run_id)
        if work is None:
            continue
        if work.type == "run_ended":
            return
        run_id = work.run_id
        started = time.thread_time()
        _step(client, work, workspace, index, seed, secure_round)
        cpu[work.round] = cpu.get(work.round, 0.0) + time.thread_time() - started


def _approved(client: SiloClient) -> bool:
    try:
        return client.whoami().status == "approved"
    except ServiceRejected as exc:
        if exc.status != 403:  # 403: enrolled, approval pending
            raise
        return False


def _step(client: SiloClient, work: Task, workspace: Path, index: int, seed: int, sr) -> None:  # type: ignore[no-untyped-def]
    n = n_examples_of(index)
    if work.type == "secagg_advertise":
        sr.advertise(client, client.key, work, workspace, n_examples=n)
    elif work.type == "secagg_share":
        sr.share(client, client.key, work, workspace)
    elif work.type == "secagg_unmask":
        sr.unmask(client, client.key, work, workspace)
    elif work.type == "train":
        # silos.agent._submit_masked without DP: clip, weight, quantize + mask, submit
        assert work.secagg is not None
        delta = silo_delta(seed, index, work.round, work.secagg.dim).astype(np.float64)
        clipped = sr.clip_l2(delta, work.secagg.clip)
        weight = work.secagg.weight if work.secagg.weight is not None else 1.0
        message = sr.masked_update(client, client.key, work, workspace, weight * clipped)
        client.submit_masked(work.run_id, work.round, message, n, 0.0, None)
    else:
        raise RuntimeError(f"silo {client.silo}: unexpected task {work.type!r}")


def worker_main(spec_path: Path) -> None:
    """One worker process: enrol its silos, serve them in threads, write what they measured."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    spec = json.loads(spec_path.read_text())
    clients, cpu, errors = {}, {}, {}
    for i in spec["indices"]:
        clients[i] = SiloClient(
            spec["url"],
            federation=FEDERATION,
            silo=silo_name(i),
            key=Ed25519PrivateKey.generate(),
            retry_for_s=600,
        )
        clients[i].enrol()
        cpu[i] = {}

    def run(i: int) -> None:
        try:
            serve_silo(clients[i], Path(spec["workspace"]) / silo_name(i), i, spec["seed"], cpu[i])
        except Exception as exc:  # reported to the orchestrator, which fails the check
            errors[i] = f"{type(exc).__name__}: {exc}"
            raise

    threads = [threading.Thread(target=run, args=(i,)) for i in spec["indices"]]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    out = {"cpu": {silo_name(i): c for i, c in cpu.items()}, "errors": errors}
    Path(spec["out"]).write_text(json.dumps(out))


# --- service side ----------------------------------------------------------------------------


class ServiceProbe:
    """CPU times and peak RSS of the service process (psutil), sampled every 20 ms."""

    def __init__(self, pid: int) -> None:
        import psutil

        self.proc = psutil.Process(pid)
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        while not self._stop.wait(0.02):
            try:
                self.peak = max(self.peak, self.proc.memory_info().rss)
            except Exception:  # the process is gone: nothing more to sample
                return

    def cpu(self) -> float:
        t = self.proc.cpu_times()
        return float(t.user + t.system)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


@contextmanager
def fresh_database(url: str) -> Iterator[str]:
    """A new empty database on the server of `url`, dropped afterwards; `url` itself when the
    role may not create databases."""
    import psycopg
    from psycopg import sql
    from sqlalchemy.engine import make_url

    admin = make_url(url)
    dsn = admin.set(drivername="postgresql").render_as_string(hide_password=False)
    name = f"fedsilo_scale_{uuid.uuid4().hex[:12]}"
    try:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    except psycopg.Error as exc:
        print(f"(cannot create a database, using {admin.database} as is: {exc})")
        yield url
        return
    try:
        yield admin.set(database=name).render_as_string(hide_password=False)
    finally:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# --- one trial -------------------------------------------------------------------------------


@dataclass
class Trial:
    silos: int
    params: int
    degree: int | None
    latency_s: list[float] = field(default_factory=list)
    service_cpu_s: list[float] = field(default_factory=list)
    peak_rss_mb: float = 0.0
    silo_cpu_s: float = 0.0  # mean per silo per round
    forced_closes: int = 0
    max_error: float = float("inf")  # largest |model - exact| over coordinates and rounds
    error_bound: float = 0.0  # what quantization allows
    l2_ratio: float = float("inf")  # ||model - exact|| / ||smallest silo's weighted update||
    contributors_ok: bool = False
    problems: list[str] = field(default_factory=list)

    @property
    def exact(self) -> bool:
        return (
            not self.problems
            and self.contributors_ok
            and self.max_error <= self.error_bound
            and self.l2_ratio < 0.1
        )


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
) -> Trial:
    """N silos, `rounds` secure rounds of a `params`-weight model; returns the figures."""
    trial = Trial(silos=n, params=params, degree=degree)
    workspace.mkdir(parents=True, exist_ok=True)
    port = free_port()
    service = start_service(workspace / "service", port, database_url)
    probe = ServiceProbe(service.popen.pid)
    procs: list[subprocess.Popen[bytes]] = []
    try:
        url = f"http://127.0.0.1:{port}"
        token = (workspace / "service" / "admin.token").read_text().strip()
        coord = CoordinatorClient(url, token=token, retry_for_s=60)
        coord.create_federation(FEDERATION)
        outs = _start_workers(n, workers, url, workspace, seed, procs)
        _approve_all(coord, n, procs)
        spec = RunSpec(
            federation=FEDERATION,
            dataset="heart_disease",
            model=ModelSpec(kind="logreg", n_features=params - 1),
            rounds=rounds,
            min_silos=n,
            round_deadline_s=deadline_s,
            secure_aggregation=SecureAggregationSpec(degree=degree),
            federation_statistics=False,
        )
        run_id = coord.create_run(RunCreate(spec=spec)).run_id
        zeros = {name: np.zeros(shape, np.float32) for name, shape in param_shapes(spec.model)}
        coord.put_initial_model(run_id, tensors.encode(zeros, {"version": "0"}))
        coord.start_run(run_id)
        for r in range(1, rounds + 1):
            probe.peak = 0
            cpu0, t0 = probe.cpu(), time.monotonic()
            trial.forced_closes += _run_round(coord, run_id, r, deadline_s, procs)
            trial.latency_s.append(time.monotonic() - t0)
            trial.service_cpu_s.append(probe.cpu() - cpu0)
            trial.peak_rss_mb = max(trial.peak_rss_mb, probe.peak / 2**20)
        coord.finish_run(run_id, RunFinish(status="finished", final_model_version=rounds))
        silo_cpu = _join_workers(procs, outs, trial)
        trial.silo_cpu_s = silo_cpu / (n * rounds)
        _check(coord, run_id, spec, n, rounds, seed, trial)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        probe.stop()
        service.stop()
    return trial


def _start_workers(
    n: int,
    workers: int,
    url: str,
    workspace: Path,
    seed: int,
    procs: list[subprocess.Popen[bytes]],
) -> list[Path]:
    outs = []
    for w in range(min(workers, n)):
        spec = {
            "url": url,
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
                [sys.executable, __file__, "--worker", str(spec_path)],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
            )
        )
        outs.append(Path(spec["out"]))
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
        out = coord.wait_round(run_id, number, wait_s=max(0.0, min(remaining, 5.0)))
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
    return total


def _check(
    coord: CoordinatorClient,
    run_id: str,
    spec: RunSpec,
    n: int,
    rounds: int,
    seed: int,
    trial: Trial,
) -> None:
    """Every model version equals the running sum of the exact weighted means."""
    from aggregation.secagg.quantize import Quantizer
    from silos.secure_round import clip_l2

    sa = spec.secure_aggregation
    weights = np.array([n_examples_of(i) for i in range(n)], dtype=np.float64)
    weights /= weights.sum()
    # per round the weighted sum of n quantized vectors is within n / scale of the exact one
    # per coordinate (aggregation/secagg/quantize.py); float32 storage adds an ulp per round
    step = n / Quantizer(clip=sa.clip, n_summands=n, bits=sa.bits).scale
    expected = np.zeros(spec.model.n_features + 1)
    trial.max_error, trial.error_bound, trial.l2_ratio = 0.0, 0.0, 0.0
    for r in range(1, rounds + 1):
        parts = [
            weights[i] * clip_l2(silo_delta(seed, i, r, expected.size).astype(np.float64), sa.clip)
            for i in range(n)
        ]
        expected += np.sum(parts, axis=0)
        got, _ = tensors.decode_expected(coord.download_model(run_id, r), param_shapes(spec.model))
        error = np.concatenate([a.ravel() for a in got]).astype(np.float64) - expected
        trial.max_error = max(trial.max_error, float(np.abs(error).max()))
        trial.error_bound = r * step + r * float(np.abs(expected).max()) * 2.0**-23
        # a silo lost or counted twice would add its whole part: compare with the smallest
        smallest = min(float(np.linalg.norm(p)) for p in parts)
        trial.l2_ratio = max(trial.l2_ratio, float(np.linalg.norm(error)) / smallest)
    aggregates = [json.loads(e.payload) for e in coord.ledger(run_id) if e.kind == "aggregate"]
    names = sorted(silo_name(i) for i in range(n))
    trial.contributors_ok = len(aggregates) == rounds and all(
        sorted(c["silo"] for c in a["contributors"]) == names for a in aggregates
    )


# --- report ----------------------------------------------------------------------------------


def report(trials: list[Trial]) -> None:
    print(
        f"{'N':>4} {'params':>9} {'graph':>6} | {'latency med s':>13} {'max s':>7} "
        f"{'s/silo':>7} | {'svc CPU s/rnd':>13} {'peak MB':>8} | {'silo CPU s':>10} | exact"
    )
    for t in trials:
        med = statistics.median(t.latency_s)
        graph = "full" if t.degree is None else f"k={t.degree}"
        print(
            f"{t.silos:>4} {t.params:>9.0e} {graph:>6} | {med:>13.2f} {max(t.latency_s):>7.2f} "
            f"{med / t.silos:>7.3f} | {statistics.median(t.service_cpu_s):>13.2f} "
            f"{t.peak_rss_mb:>8.0f} | {t.silo_cpu_s:>10.3f} | "
            f"{'yes' if t.exact else 'NO'} (max err {t.max_error:.1e}, bound {t.error_bound:.1e}; "
            f"L2 err / one silo {t.l2_ratio:.1e})"
        )
        for p in t.problems:
            print(f"     problem: {p}")
    by_graph: dict[int | None, list[Trial]] = {}
    for t in trials:
        by_graph.setdefault(t.degree, []).append(t)
    for degree, group in by_graph.items():
        group.sort(key=lambda t: t.silos)
        if len(group) < 2:
            continue
        a, b = group[0], group[-1]
        for what, xa, xb in (
            ("round latency", statistics.median(a.latency_s), statistics.median(b.latency_s)),
            ("service CPU", statistics.median(a.service_cpu_s), statistics.median(b.service_cpu_s)),
        ):
            ratio, linear = xb / xa, b.silos / a.silos
            print(
                f"{'full graph' if degree is None else f'SecAgg+ k={degree}'}: {what} x{ratio:.1f} "
                f"from N={a.silos} to N={b.silos} (linear: x{linear:.0f}): "
                f"{'MET' if ratio <= linear else 'MISSED'}"
            )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--worker", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--silos", type=int, nargs="+", default=[4, 16, 64])
    parser.add_argument("--params", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--degree", type=int, default=None, help="SecAgg+ degree (default: full)")
    parser.add_argument("--workers", type=int, default=4, help="silo worker processes")
    parser.add_argument("--database-url", default=os.environ.get("FEDSILO_TEST_PG_URL", ""))
    parser.add_argument("--workspace", type=Path, default=None)
    args = parser.parse_args()
    if args.worker:
        worker_main(args.worker)
        return
    if not args.database_url:
        parser.error('no PostgreSQL: pass --database-url or eval "$(scripts/pg-test-server start)"')
    trials = []
    with tempfile.TemporaryDirectory(prefix="fedsilo-scale-") as tmp:
        for n in args.silos:
            ws = (args.workspace or Path(tmp)) / f"n{n}"
            with fresh_database(args.database_url) as db:
                trial = run_trial(
                    n, args.params, args.rounds, db, ws, degree=args.degree, workers=args.workers
                )
            trials.append(trial)
            print(json.dumps(asdict(trial)), flush=True)
    report(trials)
    if not all(t.exact for t in trials):
        sys.exit(1)


if __name__ == "__main__":
    main()
