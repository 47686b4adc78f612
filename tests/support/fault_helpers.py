"""A whole federation as real processes on 127.0.0.1, for integration, fault and HA tests.

`start_federation` starts the aggregation service (one or more processes sharing a database),
one silo agent per chosen UCI hospital, and approves them; the returned `Federation` kills,
stops (SIGSTOP), resumes and restarts any of them, and says whether it is making progress
(`Federation.wait`, `join`: waits that fit a loaded machine). Imported by tests, not a fixture
module; `support.pg_cluster.PgCluster` is a PostgreSQL cluster a test may restart.
"""

from __future__ import annotations

import os
import shutil
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sqlalchemy import create_engine, text

from flows.admin_token import private_token_file
from flows.coordinator import federated_training
from flows.processes import Proc, base_env, spawn, start_agent, start_service, wait_http
from flows.service_client import CoordinatorClient
from schemas import tensors
from schemas.contracts.loader import load_contract
from schemas.specs import (
    ModelSpec,
    SecureAggregationSpec,
    StrategySpec,
    TrainingSpec,
    param_shapes,
)
from silos.features import FeaturePipeline
from support.live_service import free_port, publish_shipped_contract, write_heart_silos
from support.progress import IDLE_S, file_sizes, join_progressing, wait_progressing
from support.stopping import stop_all

HOSPITALS = ("cleveland", "hungary", "switzerland", "va_long_beach")
N_FEATURES = FeaturePipeline.from_contract(load_contract("heart_disease")).n_features
MODEL = ModelSpec(kind="logreg", n_features=N_FEATURES)
TRAINING = TrainingSpec(local_epochs=2, lr=0.1, batch_size=32)
REPO = Path(__file__).resolve().parents[2]  # tests/support/ -> the repository root
START_S = 180.0  # a process's start-up on a loaded 2-core CI machine can take a minute


def wait_until(
    condition: Callable[[], Any], timeout_s: float, what: str, logs: Callable[[], str] = str
) -> Any:
    """Poll `condition` until it returns something truthy; fail naming `what` otherwise."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:.0f}s waiting for {what}\n{logs()}")
        time.sleep(0.05)


@dataclass
class Federation:
    """The processes of one federation; services[i] listens on urls[i]."""

    root: Path
    database_url: str
    urls: list[str]
    token: str
    coord: CoordinatorClient
    services: list[Proc]
    agents: dict[str, Proc]
    configs: dict[str, Path]
    prefect_api_url: str
    access_log: bool = False
    agent_env: dict[str, dict[str, str]] = field(default_factory=dict)
    stopped: set[str] = field(default_factory=set)

    @property
    def db_url(self) -> str:
        return self.database_url or f"sqlite:///{self.root / 'service' / 'service.db'}"

    def port(self, i: int = 0) -> int:
        return int(self.urls[i].rsplit(":", 1)[1])

    def restart_service(self, i: int = 0) -> None:
        self.services[i].stop()
        self.services[i] = _service(
            self.root / "service", self.port(i), self.database_url, self.access_log, i
        )

    def restart_agent(self, name: str) -> None:
        self.agents[name].stop()
        self.agents[name] = _agent(
            self.configs[name], self.prefect_api_url, self.agent_env.get(name, {})
        )

    def sigstop(self, name: str) -> None:
        os.kill(self.agents[name].popen.pid, signal.SIGSTOP)
        self.stopped.add(name)

    def sigcont(self, name: str) -> None:
        os.kill(self.agents[name].popen.pid, signal.SIGCONT)
        self.stopped.discard(name)

    def logs(self) -> str:
        procs = [*self.services, *self.agents.values()]
        return "\n".join(f"--- {p.name}\n{p.log_tail(15)}" for p in procs)

    def progress(self) -> tuple[object, ...]:
        """Changes while the federation works: its processes' logs grow, the service stores
        ledger entries, secure-aggregation messages and contributions."""
        try:
            counts = query(
                self.db_url,
                "SELECT (SELECT count(*) FROM ledger_entries), "
                "(SELECT count(*) FROM secagg_messages), (SELECT count(*) FROM contributions)",
            )[0]
        except Exception as exc:  # noqa: BLE001 - the database may be down on purpose
            counts = (type(exc).__name__,)
        return (file_sizes([self.root]), counts)

    def wait(
        self, condition: Callable[[], Any], what: str, idle_s: float = IDLE_S, poll_s: float = 0.05
    ) -> Any:
        """`condition()`'s first truthy value; fails only when the federation stands still
        for `idle_s` (or after `support.progress.MAX_S`)."""
        return wait_progressing(
            condition, self.progress, what, self.logs, idle_s=idle_s, poll_s=poll_s
        )

    def stop(self) -> None:
        for name in list(self.stopped):
            self.sigcont(name)
        stop_all([*self.agents.values(), *self.services])
        self.coord.close()


def _service(workspace: Path, port: int, database_url: str, access_log: bool, i: int) -> Proc:
    """`fedsilo aggregator serve`, or with `access_log` the same app under uvicorn with its
    access log on, so a test can see which process answered which request."""
    if not access_log:
        return start_service(workspace, port, database_url, wait_s=START_S)
    env = base_env(
        FEDSILO_SERVICE_WORKSPACE=str(workspace), FEDSILO_SERVICE_DATABASE_URL=database_url
    )
    args = [sys.executable, "-m", "uvicorn", "aggregation.service.main:create_app", "--factory"]
    args += ["--host", "127.0.0.1", "--port", str(port), "--log-level", "info"]
    proc = spawn(f"aggregation service {i}", args, workspace / f"access-{i}.log", env)
    try:
        wait_http(proc, f"http://127.0.0.1:{port}/healthz", START_S)
    except BaseException:
        proc.kill9()
        raise
    return proc


def _agent(config: Path, prefect_api_url: str, env: dict[str, str]) -> Proc:
    """`flows.processes.start_agent` for `config`, with `env` added to the agent's environment
    (a training delay: `silos.bench_delay`)."""
    if not env:
        return start_agent(config, config.parent / "agent.log", prefect_api_url)
    args = [sys.executable, "-m", "flows.cli", "silo", "start", "--config", str(config)]
    full_env = base_env(PREFECT_API_URL=prefect_api_url, **env)
    return spawn(f"silo agent {config.parent.name}", args, config.parent / "agent.log", full_env)


def start_federation(
    root: Path,
    prefect_api_url: str,
    database_url: str = "",
    *,
    silos: tuple[str, ...] = HOSPITALS,
    n_services: int = 1,
    access_log: bool = False,
    slow: str | None = None,
    policy: dict[str, str] | None = None,
    break_data: str | None = None,
    agent_prefect_env: str | None = None,
    agent_env: dict[str, dict[str, str]] | None = None,
) -> Federation:
    """Service process(es), one agent per silo in `silos`, all enrolled and approved.

    Each silo.toml names `prefect_api_url`; the agents' environment says PREFECT_API_URL =
    `agent_prefect_env` (default: the same URL), so a test can show the config wins;
    `agent_env` adds variables to chosen agents' environments (silo name -> variables).

    Several services share `database_url` and one workspace folder (keys, admin token, model
    files: a shared volume in production).
    """
    ports = [free_port() for _ in range(n_services)]
    urls = [f"http://127.0.0.1:{p}" for p in ports]
    workspace = root / "service"
    services: list[Proc] = []
    try:
        for i, p in enumerate(ports):
            services.append(_service(workspace, p, database_url, access_log, i))
    except BaseException:
        for proc in services:
            proc.kill9()
        raise
    token = (workspace / "admin.token").read_text().strip()
    coord = CoordinatorClient(urls, token=token, retry_for_s=120)
    coord.create_federation("heart")
    # published before the agents start: each silo.toml pins it (accepted in advance)
    publish_shipped_contract(coord, "heart", "heart_disease")
    written = write_heart_silos(root / "silos", urls, prefect_api_url, policy=policy)
    for name in set(written) - set(silos):
        shutil.rmtree(written[name].parent)
    configs = {n: written[n] for n in silos}
    if slow:  # many more rows: this silo trains for seconds, long enough to be hit mid-round
        csv = configs[slow].parent / "data.csv"
        frame = pd.read_csv(csv)
        big = pd.concat([frame] * 300, ignore_index=True)
        big["id"] = range(1, len(big) + 1)  # the contract's ids are unique: renumber the copies
        big.to_csv(csv, index=False)
    if break_data:  # this hospital's export lost a column: its gate must fail every round
        csv = configs[break_data].parent / "data.csv"
        pd.read_csv(csv).drop(columns=["age"]).to_csv(csv, index=False)
    agent_env = agent_env or {}
    agents = {
        name: _agent(cfg, agent_prefect_env or prefect_api_url, agent_env.get(name, {}))
        for name, cfg in configs.items()
    }
    fed = Federation(
        root,
        database_url,
        urls,
        token,
        coord,
        services,
        agents,
        configs,
        prefect_api_url,
        access_log,
        agent_env,
    )
    try:

        def enrolled() -> bool:
            exited = [p.name for p in agents.values() if not p.alive()]
            assert not exited, f"{exited} exited while starting\n{fed.logs()}"
            return len([s for s in coord.silos("heart") if s.status == "pending"]) >= len(silos)

        fed.wait(enrolled, "every silo agent to enrol")
        for name in configs:
            coord.approve("heart", name)
    except BaseException:
        fed.stop()
        raise
    return fed


def train(
    urls: list[str],
    token: str,
    out: Path,
    rounds: int,
    *,
    strategy: StrategySpec | None = None,
    model: ModelSpec = MODEL,
    min_silos: int = 3,
    secure: bool = True,
    # an upper bound: a round closes as soon as every silo answered, and round 1 opens once
    # the silos are ready (their cold start is not in it); only a silo that never answers
    # makes a round wait this long
    deadline_s: float = 300,
    **extra: Any,
) -> dict:  # type: ignore[type-arg]
    """One run of the coordinator's flow (a Prefect flow run) in this process; the admin
    token reaches it as a private file's path, never as a parameter (flows/admin_token.py)."""
    with private_token_file(token) as token_file:
        return federated_training(
            service_urls=urls,
            admin_token_file=str(token_file),
            federation="heart",
            dataset="heart_disease",
            model=model,
            strategy=strategy or StrategySpec(),
            training=TRAINING,
            rounds=rounds,
            min_silos=min_silos,
            round_deadline_s=deadline_s,
            output_dir=str(out),
            secure_aggregation=SecureAggregationSpec(enabled=secure),
            **extra,
        )


def train_in_thread(*args: Any, **kwargs: Any) -> tuple[threading.Thread, dict[str, Any]]:
    """`train` in a daemon thread; the outcome dict gets "result" or "error"."""
    outcome: dict[str, Any] = {}

    def target() -> None:
        try:
            outcome["result"] = train(*args, **kwargs)
        except BaseException as exc:  # reported by the test, not lost in the thread
            outcome["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread, outcome


def join(thread: threading.Thread, outcome: dict[str, Any], fed: Federation) -> dict:  # type: ignore[type-arg]
    """The run's result once `thread` ends; fails if the federation stalls meanwhile."""
    join_progressing(thread, fed.progress, "the run to finish", fed.logs)
    if "error" in outcome:
        raise AssertionError(f"the run failed: {outcome['error']!r}\n{fed.logs()}")
    return dict(outcome["result"])


def query(db_url: str, sql: str, **params: Any) -> list[tuple[Any, ...]]:
    engine = create_engine(db_url)
    try:
        with engine.connect() as conn:
            return [tuple(r) for r in conn.execute(text(sql), params).all()]
    finally:
        engine.dispose()


def current_round(fed: Federation) -> tuple[str, int, str | None, str] | None:
    """(run id, round number, secure-aggregation stage, round status) of the latest round of
    the run in progress, or None while no run is running or it has no round yet."""
    run_id = latest_run_id(fed)
    if run_id is None:
        return None
    rows = query(
        fed.db_url,
        "SELECT run_id, number, secagg_stage, status FROM rounds WHERE run_id = :r "
        "ORDER BY number DESC LIMIT 1",
        r=run_id,
    )
    return rows[0] if rows else None  # type: ignore[return-value]


def updates_per_round(db_url: str, run_id: str) -> dict[int, int]:
    """How many updates the service counted in each round of the run."""
    rows = query(
        db_url,
        "SELECT round, count(*) FROM contributions WHERE run_id = :r AND kind = 'update' "
        "GROUP BY round",
        r=run_id,
    )
    return {int(r): int(n) for r, n in rows}


def assert_every_model_is_its_round_mean(
    db_url: str, run_id: str, rounds: int, n_silos: int = 4
) -> None:
    """model_r == model_{r-1} + weighted mean of exactly the round's stored updates."""
    shapes = param_shapes(MODEL)
    models = dict(query(db_url, "SELECT version, payload FROM models WHERE run_id = :r", r=run_id))
    rows = query(
        db_url,
        "SELECT round, silo, n_examples, payload FROM contributions "
        "WHERE run_id = :r AND kind = 'update'",
        r=run_id,
    )
    assert sorted(models) == list(range(rounds + 1))
    for r in range(1, rounds + 1):
        updates = [(n, tensors.decode_expected(p, shapes)[0]) for rr, _, n, p in rows if rr == r]
        assert len(updates) == n_silos, (r, len(updates))
        prev = tensors.decode_expected(models[r - 1], shapes)[0]
        new = tensors.decode_expected(models[r], shapes)[0]
        total = sum(n for n, _ in updates)
        for i in range(len(shapes)):
            ref = prev[i] + sum(n * u[i] for n, u in updates) / total
            np.testing.assert_allclose(new[i], ref, rtol=1e-5, atol=1e-6)


def assert_ledger_verifies(fed: Federation) -> None:
    """The service's ledger chain, signatures and model files verify."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    from schemas.ledger_verify import directory_artifact_checker, verify_chain

    keys = fed.coord.ledger_keys()
    public = {k: Ed25519PublicKey.from_public_bytes(bytes.fromhex(v)) for k, v in keys.items()}
    report = verify_chain(
        fed.coord.ledger(), public, directory_artifact_checker(fed.root / "service")
    )
    assert report.ok, report


def secagg_sent(db_url: str, run_id: str, round_: int, stage: str, silo: str) -> bool:
    """Whether `silo` sent its message of `stage` in that round (the service stored it)."""
    rows = query(
        db_url,
        "SELECT count(*) FROM secagg_messages WHERE run_id = :r AND round = :n "
        "AND stage = :st AND silo = :s",
        r=run_id,
        n=round_,
        st=stage,
        s=silo,
    )
    return bool(rows[0][0])


def latest_run_id(fed: Federation) -> str | None:
    runs = fed.coord.list_runs("heart", limit=1)
    return runs[0].run_id if runs and runs[0].status == "running" else None


def ledger_kinds(fed: Federation, run_id: str) -> list[str]:
    return [e.kind for e in fed.coord.ledger(run_id)]
