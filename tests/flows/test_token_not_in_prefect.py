"""The coordinator's admin token never reaches Prefect: not its parameters, logs, artifacts,
task runs, states or events (read back over Prefect's API), nor its database file.

Two real `federated_training` flow runs against a real aggregation service (uvicorn in a
thread, SQLite) and the Prefect server of the test session:

``cli-token``
    `fedsilo train --token VALUE`, the way a token used to leak: the run starts, opens its
    first round and fails at a one-second deadline (no silo agent answers).
``secret-block``
    the flow called with `admin_token_block`, a Prefect Secret block: a whole one-round run
    whose two silos this test answers in a thread, ending with the flow's artifacts.

Each run's token is random, so a hit can only come from that run. The database check reads
the server's PostgreSQL database when FEDSILO_TEST_PREFECT_DB_URL names it (.ci/run's server:
its rows through pg_dump, its files and the WAL as bytes), else `prefect.db` under
``$PREFECT_HOME`` (its rows, and the file and WAL as bytes); it is skipped without either.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import sqlite3
import stat
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import numpy as np
import psycopg
import pytest
import typer
from pydantic import SecretStr
from sqlalchemy.engine import make_url
from support import prefect_api
from support.live_service import (
    coordinator,
    enrolled_silo,
    publish_shipped_contract,
    service_in_thread,
)
from support.validation import validate
from typer.testing import CliRunner

from aggregation.backup_db import _libpq as libpq_dsn_and_env
from flows.admin_token import private_token_file, resolve_admin_token
from flows.cli import app
from flows.cli.common import flow_token_source
from flows.exceptions import AdminTokenError
from flows.schedule import deployment_parameters
from schemas import tensors
from schemas.contracts.loader import load_contract
from schemas.specs import ModelSpec, SecureAggregationSpec, param_shapes
from schemas.wire import Metrics, MetricsReport
from silos.client import SiloClient
from silos.client_errors import Conflict
from silos.features import FeaturePipeline

MODEL = ModelSpec(kind="logreg", n_features=3)
LOGS_SETTLE_S = 120.0  # Prefect batches logs and backs off on 503s; early arrival ends the wait


@dataclass(frozen=True)
class FlowRunLeakCheck:
    token: str
    flow_run_id: str
    parameters: dict[str, Any]


def _service(workspace: Path, token: str) -> AbstractContextManager[str]:
    """The aggregation service with admin token `token`, uvicorn in a thread; yields its URL."""
    return service_in_thread(workspace, f"sqlite:///{workspace}/service.db", admin_token=token)


def _federation(url: str, token: str) -> tuple[str, dict[str, SiloClient]]:
    """A federation with a unique name (so the flow run's name finds it) and two silos."""
    federation = f"tok{uuid4().hex[:10]}"
    coord = coordinator(url, token)
    coord.create_federation(federation)
    publish_shipped_contract(coord, federation, "heart_disease")
    return federation, {n: enrolled_silo(url, coord, federation, n) for n in ("a", "b")}


def _answer_tasks(
    silos: dict[str, SiloClient], stop: threading.Event, errors: list[BaseException]
) -> None:
    """Play both silos until the run ends: a fixed update per train task, fixed metrics per
    evaluate task (a fake at the silo's edge: this test is about the coordinator)."""
    shapes = param_shapes(MODEL)
    names = [n for n, _ in shapes]
    try:
        while not stop.is_set():
            for i, client in enumerate(silos.values()):
                task = client.next_task(wait_s=0.2)
                if task is None:
                    continue
                if task.type == "run_ended":
                    return
                try:
                    if task.type == "train":
                        # as the agent's gate would, before the round's first answer
                        validate(client, task.run_id, task.round, n_rows=100)
                        delta = [
                            np.full(s, 0.1 * (i + 1), np.float32) for _, s in param_shapes(MODEL)
                        ]
                        meta = {"run_id": task.run_id, "round": str(task.round), "n_examples": "10"}
                        payload = tensors.encode(dict(zip(names, delta, strict=True)), meta)
                        client.submit_update(task.run_id, task.round, payload)
                    elif task.type == "evaluate":
                        metrics = Metrics(n_test=10, loss=0.5, accuracy=0.75)
                        client.submit_evaluation(
                            task.run_id, task.round, MetricsReport(metrics=metrics)
                        )
                except Conflict:
                    pass  # answered already; the service hands the task out until it is seen
    except BaseException as exc:  # reported by the fixture, not lost in the thread
        errors.append(exc)


def _api(method: str, path: str, body: object = None) -> Any:
    return prefect_api.call(os.environ["PREFECT_API_URL"], method, path, body)


def _flow_run(federation: str, dataset: str) -> dict[str, Any]:
    found = _api(
        "POST",
        "/flow_runs/filter",
        {
            "flows": {"name": {"any_": ["federated_training"]}},
            # the coordinator tags its flow run once the service created the run
            "flow_runs": {"tags": {"all_": [f"federation:{federation}", f"dataset:{dataset}"]}},
        },
    )
    assert len(found) == 1, f"expected one flow run of {federation}/{dataset}, found {len(found)}"
    assert found[0]["name"].startswith(f"{federation}-{dataset}-"), found[0]["name"]
    return dict(found[0])


def _logs(flow_run_id: str) -> list[dict[str, Any]]:
    """Every log line of the flow run, once the engine's last line ("Finished in state")
    arrived: Prefect ships logs to its API from a background worker."""
    deadline = time.monotonic() + LOGS_SETTLE_S
    while True:
        logs: list[dict[str, Any]] = []
        while True:
            page = _api(
                "POST",
                "/logs/filter",
                {
                    "logs": {"flow_run_id": {"any_": [flow_run_id]}},
                    "limit": 200,
                    "offset": len(logs),
                },
            )
            logs.extend(page)
            if len(page) < 200:
                break
        if any("Finished in state" in line["message"] for line in logs):
            return logs
        if time.monotonic() > deadline:
            pytest.fail(f"flow run {flow_run_id}: no final log line after {LOGS_SETTLE_S:.0f} s")
        time.sleep(0.5)


def _everything_prefect_shows(flow_run_id: str) -> dict[str, Any]:
    """What Prefect's API holds about one flow run, as JSON-able values by source."""
    in_run = {"flow_runs": {"id": {"any_": [flow_run_id]}}}
    return {
        "flow run": _api("GET", f"/flow_runs/{flow_run_id}"),
        "states": _api("GET", f"/flow_run_states/?flow_run_id={flow_run_id}"),
        "logs": _logs(flow_run_id),
        "artifacts": _api(
            "POST", "/artifacts/filter", {"artifacts": {"flow_run_id": {"any_": [flow_run_id]}}}
        ),
        "task runs": _api("POST", "/task_runs/filter", in_run),
        "events": _api(
            "POST",
            "/events/filter",
            {"filter": {"any_resource": {"id": [f"prefect.flow-run.{flow_run_id}"]}}, "limit": 50},
        ),
    }


@pytest.fixture(scope="module")
def cli_token_run(
    prefect_api_url: str, tmp_path_factory: pytest.TempPathFactory
) -> FlowRunLeakCheck:
    """`fedsilo train --token VALUE`: the run starts and fails at its first round's deadline."""
    token = secrets.token_urlsafe(32)
    root = tmp_path_factory.mktemp("cli-token")
    dataset = "heart_disease"
    width = FeaturePipeline.from_contract(load_contract(dataset)).n_features
    with _service(root / "svc", token) as url, pytest.MonkeyPatch.context() as patch:
        federation, _silos = _federation(url, token)
        from flows.coordinator import federated_training

        patch.setattr(federated_training, "retries", 0)  # it fails on purpose; fail once
        result = CliRunner().invoke(
            app,
            [
                "train",
                *("--federation", federation, "--dataset", dataset, "--n-features", str(width)),
                *("--rounds", "1", "--min-silos", "2", "--round-deadline-s", "1"),
                *("--ready-timeout-s", "0"),  # its silos never start: no readiness wait
                *("--output-dir", str(root / "models"), "--service-url", url, "--token", token),
            ],
        )
    assert result.exit_code != 0, result.output  # no silo answered: the round must fail
    run = _flow_run(federation, dataset)
    assert run["state_type"] == "FAILED", run["state"]
    return FlowRunLeakCheck(token, str(run["id"]), dict(run["parameters"]))


@pytest.fixture(scope="module")
def secret_block_run(
    prefect_api_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[FlowRunLeakCheck]:
    """The flow with `admin_token_block`: a whole one-round run, artifacts included."""
    from prefect.blocks.system import Secret

    from flows.coordinator import federated_training

    token = secrets.token_urlsafe(32)
    root = tmp_path_factory.mktemp("secret-block")
    block = f"fedsilo-test-{uuid4().hex[:12]}"
    Secret(value=SecretStr(token)).save(block)
    stop, errors = threading.Event(), list[BaseException]()
    try:
        with _service(root / "svc", token) as url:
            federation, silos = _federation(url, token)
            driver = threading.Thread(target=_answer_tasks, args=(silos, stop, errors), daemon=True)
            driver.start()
            try:
                result = federated_training(
                    service_urls=[url],
                    admin_token_block=block,
                    federation=federation,
                    dataset="heart_disease",
                    model=MODEL,
                    rounds=1,
                    min_silos=2,
                    round_deadline_s=30,
                    ready_timeout_s=0,  # in-process silos: they answer, but never warm up
                    output_dir=str(root / "models"),
                    secure_aggregation=SecureAggregationSpec(enabled=False),
                    federation_statistics=False,
                )
            finally:
                stop.set()
                driver.join(10)
        assert not errors, errors
        assert result["final_version"] == 1
        run = _flow_run(federation, "heart_disease")
        yield FlowRunLeakCheck(token, str(run["id"]), dict(run["parameters"]))
    finally:
        found = _api("GET", f"/block_types/slug/secret/block_documents/name/{block}")
        _api("DELETE", f"/block_documents/{found['id']}")


@pytest.fixture(params=["cli-token", "secret-block"])
def flow_run(request: pytest.FixtureRequest) -> FlowRunLeakCheck:
    name = {"cli-token": "cli_token_run", "secret-block": "secret_block_run"}[request.param]
    return request.getfixturevalue(name)  # type: ignore[no-any-return]


def test_prefect_api_shows_no_token(flow_run: FlowRunLeakCheck) -> None:
    shown = _everything_prefect_shows(flow_run.flow_run_id)
    assert shown["logs"], "the flow run logged nothing: nothing was checked"
    for source, value in shown.items():
        leaked = flow_run.token in json.dumps(value, default=str)  # not echoed on failure
        assert not leaked, f"token in Prefect's {source} of flow run {flow_run.flow_run_id}"
    assert "admin_token" not in flow_run.parameters, flow_run.parameters


def test_secret_block_run_published_its_artifacts(secret_block_run: FlowRunLeakCheck) -> None:
    artifacts = _api(
        "POST",
        "/artifacts/filter",
        {"artifacts": {"flow_run_id": {"any_": [secret_block_run.flow_run_id]}}},
    )
    keys = sorted(str(a["key"]).split("-")[0] for a in artifacts)
    assert keys == ["lineage", "rounds"], keys  # so the artifact check above saw real ones
    assert secret_block_run.parameters["admin_token_block"].startswith("fedsilo-test-")


def test_cli_token_reached_the_flow_as_a_removed_private_file(
    cli_token_run: FlowRunLeakCheck,
) -> None:
    path = Path(cli_token_run.parameters["admin_token_file"])
    assert path.name == "admin.token" and path.parent.name.startswith("fedsilo-token-")
    assert not path.parent.exists(), f"{path.parent} outlived the run"


def _prefect_sqlite_database() -> Path:
    home = os.environ.get("PREFECT_HOME", "")
    if not home:
        pytest.skip(
            "PREFECT_HOME is not set, so the Prefect server's database is unknown; set it to "
            "the server's PREFECT_HOME (where its prefect.db is), or FEDSILO_TEST_PREFECT_DB_URL "
            "to its PostgreSQL database, to search the database too"
        )
    database = Path(home).expanduser() / "prefect.db"
    if not database.is_file():
        pytest.skip(f"no {database}: the Prefect server keeps its database elsewhere")
    return database


def _sqlite_rows_and_bytes(database: Path) -> tuple[str, bytes]:
    raw = b"".join(p.read_bytes() for p in sorted(database.parent.glob("prefect.db*")))
    with sqlite3.connect(f"file:{database}?mode=ro", uri=True) as conn:
        return "\n".join(conn.iterdump()), raw


def _postgres_rows(url: str) -> str:
    """The database as pg_dump's plain SQL (every row), the password passed in the environment
    as the service's backups pass it."""
    pg_dump = shutil.which("pg_dump")
    if pg_dump is None:
        pytest.skip("pg_dump (PostgreSQL's client tools) is not on PATH")
    dsn, env = libpq_dsn_and_env(url)
    done = subprocess.run(
        [pg_dump, "--no-owner", "-d", dsn], env=env, capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def _postgres_files(url: str, flow_run_id: str) -> bytes:
    """The bytes of the database's own files and of the server's WAL (where a deleted or
    overwritten row still lies until vacuum and recycling), once they hold the flow run (its
    id's 16 bytes, as PostgreSQL stores a uuid): the server writes them in the background.
    Values TOAST compressed are not readable here; the row dump above covers them."""
    data_root = os.environ.get("FEDSILO_TEST_PG_DATA", "")
    if not data_root:
        pytest.skip("FEDSILO_TEST_PG_DATA is not set: the database's files are unknown")
    data = Path(data_root) / "data"
    name = make_url(url).database
    with psycopg.connect(_libpq_url(url)) as conn:
        oid = conn.execute("SELECT oid FROM pg_database WHERE datname = %s", (name,)).fetchone()
    assert oid is not None, name
    folders = [data / "base" / str(oid[0]), data / "pg_wal"]
    needle = UUID(flow_run_id).bytes
    deadline = time.monotonic() + LOGS_SETTLE_S
    while True:
        try:
            files = [f for folder in folders for f in sorted(folder.iterdir()) if f.is_file()]
            raw = b"".join(f.read_bytes() for f in files)
        except PermissionError as exc:
            pytest.skip(f"cannot read PostgreSQL's files ({exc}): run as their owner or root")
        if needle in raw:
            return raw
        if time.monotonic() > deadline:
            raise AssertionError(f"flow run {flow_run_id} never reached the files under {data}")
        time.sleep(0.5)


def _libpq_url(url: str) -> str:
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def test_prefect_database_holds_no_token(flow_run: FlowRunLeakCheck) -> None:
    _logs(flow_run.flow_run_id)  # the run's last writes reached the server
    url = os.environ.get("FEDSILO_TEST_PREFECT_DB_URL", "")
    if url:  # .ci/run keeps its Prefect server's database in PostgreSQL
        where, rows = make_url(url).render_as_string(hide_password=True), _postgres_rows(url)
    else:
        database = _prefect_sqlite_database()
        where, (rows, raw) = str(database), _sqlite_rows_and_bytes(database)
    if flow_run.flow_run_id not in rows:
        pytest.skip(f"{where} does not hold flow run {flow_run.flow_run_id}: another server's")
    if url:
        raw = _postgres_files(url, flow_run.flow_run_id)
    assert flow_run.token not in rows, f"token in a row of {where}"
    assert flow_run.token.encode() not in raw, (
        f"token in the bytes of {where}'s files (a freed page, or the WAL)"
    )


# --- the token's file, the CLI's refusals, the deployment's parameters ------------------------


def test_private_token_file_is_owner_only_and_removed() -> None:
    with private_token_file("s3cret") as path:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
        assert resolve_admin_token(str(path), None) == "s3cret"
    assert not path.parent.exists()


def test_a_group_or_world_readable_token_file_is_refused_with_the_fix(tmp_path: Path) -> None:
    path = tmp_path / "admin.token"
    path.write_text("s3cret\n")
    path.chmod(0o644)
    with pytest.raises(AdminTokenError, match=r"mode 0644.*chmod 600") as caught:
        resolve_admin_token(str(path), None)
    assert str(path) in str(caught.value) and "s3cret" not in str(caught.value)
    result = CliRunner().invoke(
        app,
        [
            "train",
            *("--federation", "f", "--dataset", "d", "--n-features", "3"),
            *("--service-url", "http://127.0.0.1:9", "--token-file", str(path)),
        ],
    )
    assert result.exit_code == 2 and "chmod 600" in result.output, result.output


def test_the_flow_needs_a_file_or_a_block_never_a_value(tmp_path: Path) -> None:
    with pytest.raises(AdminTokenError, match="admin_token_file"):
        resolve_admin_token(None, None)
    with pytest.raises(AdminTokenError, match="does not exist"):
        resolve_admin_token(str(tmp_path / "missing"), None)
    with pytest.raises(typer.BadParameter, match="not both"):
        with flow_token_source(None, tmp_path / "t", "block"):
            pass


def test_a_deployment_names_the_token_file_or_block(tmp_path: Path) -> None:
    common: dict[str, Any] = dict(
        service_urls=["http://127.0.0.1:8700"],
        federation="f",
        dataset="d",
        model={},
        strategy={},
        training={},
        rounds=1,
        min_silos=2,
        round_deadline_s=1.0,
        output_dir=tmp_path,
    )
    by_file = deployment_parameters(token_file=tmp_path / "admin.token", **common)
    by_block = deployment_parameters(token_file=None, token_block="coordinator", **common)
    assert by_file["admin_token_file"] == str(tmp_path / "admin.token")
    assert by_block["admin_token_block"] == "coordinator"
    assert "admin_token" not in by_file and "admin_token" not in by_block
    assert by_file["ready_timeout_s"] == 900.0  # the coordinator flow's parameter
