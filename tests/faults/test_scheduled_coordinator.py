"""The coordinator in production: `fedsilo schedule` deploys the flow with a cron schedule on a
process work pool, a real `prefect worker` runs the deployment's flow runs, and a flow run
whose process is killed (SIGKILL, so Prefect marks it Crashed) resumes its training run when
retried with `prefect flow-run retry`, instead of starting over.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path

import pytest
from support import prefect_api
from support.fault_helpers import Federation, query, start_federation

from flows.processes import base_env, spawn

# generous: the module fixture (processes, a warm-up run) counts toward its first test
pytestmark = [pytest.mark.integration, pytest.mark.postgres, pytest.mark.timeout(1800)]
SILOS = ("cleveland", "hungary", "va_long_beach")
ROUNDS = 3
CRON = "0 3 1 1 *"  # 03:00 on 1 January: the schedule exists, its runs lie far ahead
PREFECT = str(Path(sys.executable).with_name("prefect"))
FEDSILO = str(Path(sys.executable).with_name("fedsilo"))


@pytest.fixture(scope="module")
def fed(
    tmp_path_factory: pytest.TempPathFactory,
    prefect_api_url: str,
    pg_database_factory: Callable[[], AbstractContextManager[str]],
) -> Iterator[Federation]:
    with pg_database_factory() as db_url:
        # the agents' environment points at a closed port: only silo.toml's [prefect] api_url
        # can bring their flow runs to this Prefect server
        federation = start_federation(
            tmp_path_factory.mktemp("scheduled"),
            prefect_api_url,
            db_url,
            silos=SILOS,
            agent_prefect_env="http://127.0.0.1:9/api",
        )
        try:
            yield federation
        finally:
            federation.stop()


@pytest.fixture(scope="module")
def deployment(fed: Federation, prefect_api_url: str) -> Iterator[tuple[str, str]]:
    """`fedsilo schedule` as the runbook has it, then the worker command it printed."""
    name, pool = f"t-{uuid.uuid4().hex[:8]}", f"fedsilo-t-{uuid.uuid4().hex[:8]}"
    args = [FEDSILO, "schedule", "--federation", "heart", "--dataset", "heart_disease"]
    args += ["--token-file", str(fed.root / "service" / "admin.token"), "--cron", CRON]
    args += ["--name", name, "--pool", pool, "--rounds", str(ROUNDS), "--min-silos", "3"]
    args += ["--local-epochs", "2", "--lr", "0.1", "--round-deadline-s", "600"]
    args += ["--output-dir", str(fed.root / "models")]
    for url in fed.urls:
        args += ["--service-url", url]
    env = base_env(PREFECT_API_URL=prefect_api_url)
    out = subprocess.run(args, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert out.returncode == 0, out.stdout + out.stderr
    printed = " ".join(out.stdout.split())
    worker_cmd = f"prefect worker start --pool {pool} --type process"
    assert worker_cmd in printed, printed
    assert f"prefect deployment run 'federated_training/{name}'" in printed, printed
    # the worker asks for work every second (default 10) to keep the test short
    worker = spawn(
        "prefect worker",
        [PREFECT, *worker_cmd.split()[1:]],
        fed.root / "worker.log",
        base_env(PREFECT_API_URL=prefect_api_url, PREFECT_WORKER_QUERY_SECONDS="1"),
    )
    try:
        yield name, pool
    finally:
        worker.stop(timeout_s=20)


def _api(prefect_api_url: str, method: str, path: str, body: object = None) -> object:
    return prefect_api.call(prefect_api_url, method, path, body)


def _prefect(prefect_api_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    """The `prefect` CLI against the test's server; it must succeed."""
    out = subprocess.run(
        [PREFECT, *args],
        env=base_env(PREFECT_API_URL=prefect_api_url),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    return out


def _trigger(name: str, prefect_api_url: str, *params: str) -> str:
    """`prefect deployment run` (the command `fedsilo schedule` printed) with `params`
    (``--param KEY=VALUE`` each); the flow run id."""
    out = _prefect(prefect_api_url, "deployment", "run", f"federated_training/{name}", *params)
    ids = [w for w in out.stdout.split() if len(w) == 36 and w.count("-") == 4]
    assert ids, out.stdout
    return ids[0]


def _state(prefect_api_url: str, flow_run_id: str) -> str:
    run = _api(prefect_api_url, "GET", f"/flow_runs/{flow_run_id}")
    assert isinstance(run, dict)
    return str(run["state_type"])


def _wait_state(fed: Federation, prefect_api_url: str, flow_run_id: str, want: str) -> None:
    def reached() -> bool:
        state = _state(prefect_api_url, flow_run_id)
        assert state not in ({"FAILED", "CRASHED", "CANCELLED"} - {want}), (
            f"flow run {flow_run_id} is {state}\n{(fed.root / 'worker.log').read_text()[-4000:]}"
        )
        return state == want

    fed.wait(reached, f"flow run {flow_run_id} to be {want}")


def _runs_of(fed: Federation, flow_run_id: str) -> list[tuple[str, str]]:
    return query(  # type: ignore[return-value]
        fed.db_url, "SELECT id, status FROM runs WHERE prefect_flow_run_id = :f", f=flow_run_id
    )


def _past_round_one(fed: Federation, flow_run_id: str) -> str:
    """The service run of `flow_run_id`, once it has a model from round 1."""

    def past() -> str | None:
        rows = _runs_of(fed, flow_run_id)
        if not rows:
            return None
        got = query(fed.db_url, "SELECT latest_model_version FROM runs WHERE id = :r", r=rows[0][0])
        return rows[0][0] if (got[0][0] or 0) >= 1 else None

    return str(fed.wait(past, "the run to finish round 1"))


def test_scheduled_deployment_runs_on_a_process_worker(
    fed: Federation, deployment: tuple[str, str], prefect_api_url: str
) -> None:
    name, pool = deployment
    found = _api(prefect_api_url, "GET", f"/deployments/name/federated_training/{name}")
    assert isinstance(found, dict)
    assert found["work_pool_name"] == pool
    assert [s["schedule"]["cron"] for s in found["schedules"]] == [CRON]
    # only the token file's path is stored: Prefect shows every parameter
    assert "admin_token" not in found["parameters"]
    assert found["parameters"]["admin_token_file"] == str(
        (fed.root / "service" / "admin.token").resolve()
    )
    # what Prefect's scheduler does on its own every minute: the cron yields scheduled runs
    _api(prefect_api_url, "POST", f"/deployments/{found['id']}/schedule", {"max_runs": 1})
    scheduled = _api(
        prefect_api_url,
        "POST",
        "/flow_runs/filter",
        {"flow_runs": {"deployment_id": {"any_": [found["id"]]}}},
    )
    assert isinstance(scheduled, list) and scheduled
    assert all(r["expected_start_time"][5:16] == "01-01T03:00" for r in scheduled)
    # a run triggered now runs on the worker and trains the federation
    flow_run_id = _trigger(name, prefect_api_url)
    _wait_state(fed, prefect_api_url, flow_run_id, "COMPLETED")
    [(run_id, status)] = _runs_of(fed, flow_run_id)
    assert status == "finished"
    assert (fed.root / "models" / f"{run_id}-v{ROUNDS}.safetensors").exists()
    # every silo agent reported its part to the Prefect API its silo.toml names
    names = [f"{silo}-{run_id}" for silo in SILOS]
    ended = prefect_api.ended_flow_runs(prefect_api_url, names)
    assert ended == dict.fromkeys(names, "COMPLETED"), ended


def _flow_run_pids(flow_run_id: str) -> list[int]:
    """The processes the worker started for this flow run (their environment names it)."""
    marker = f"PREFECT__FLOW_RUN_ID={flow_run_id}".encode()
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if marker in (proc / "environ").read_bytes().split(b"\0"):
                found.append(int(proc.name))
        except OSError:
            continue
    return found


def _crash_reports(prefect_api_url: str, flow_run_id: str) -> int:
    states = _api(prefect_api_url, "GET", f"/flow_run_states/?flow_run_id={flow_run_id}")
    assert isinstance(states, list)
    return sum(1 for st in states if st["type"] == "CRASHED")


def test_crashed_flow_run_retried_resumes_its_run(
    fed: Federation, deployment: tuple[str, str], prefect_api_url: str
) -> None:
    name, _ = deployment
    flow_run_id = _trigger(name, prefect_api_url)
    run_id = _past_round_one(fed, flow_run_id)
    pids = fed.wait(lambda: _flow_run_pids(flow_run_id), "the flow run's process")
    for pid in pids:  # the flow run's process (and any child of it), as an OOM killer would
        os.kill(pid, signal.SIGKILL)
    _wait_state(fed, prefect_api_url, flow_run_id, "CRASHED")
    # Prefect 3.9's process worker reports the crash twice: at once, and again when it has
    # reaped the process; a retry between the two would be marked crashed by the second
    log = fed.root / "worker.log"
    grace = time.monotonic() + 120  # a later Prefect may report once: then just go on
    while time.monotonic() < grace and not (
        _crash_reports(prefect_api_url, flow_run_id) >= 2
        or f"'{flow_run_id}' as crashed: Flow run infrastructure" in log.read_text(errors="replace")
    ):
        time.sleep(0.5)
    before = dict(
        query(fed.db_url, "SELECT number, closed_at FROM rounds WHERE run_id = :r", r=run_id)
    )
    done_before = [n for n, closed in before.items() if closed is not None]
    assert done_before and max(done_before) < ROUNDS + 1, before
    _prefect(prefect_api_url, "flow-run", "retry", flow_run_id)
    _wait_state(fed, prefect_api_url, flow_run_id, "COMPLETED")
    assert _runs_of(fed, flow_run_id) == [(run_id, "finished")]  # resumed, not started over
    after = dict(
        query(fed.db_url, "SELECT number, closed_at FROM rounds WHERE run_id = :r", r=run_id)
    )
    assert sorted(after) == list(range(1, ROUNDS + 2))
    for number in done_before:  # rounds closed before the crash were not trained again
        assert after[number] == before[number]
    kinds = [
        k
        for (k,) in query(fed.db_url, "SELECT kind FROM ledger_entries WHERE run_id = :r", r=run_id)
    ]
    assert kinds.count("run_started") == 1 and kinds.count("aggregate") == ROUNDS


def test_a_prefect_cancel_cancels_the_service_run_and_frees_the_silos(
    fed: Federation, deployment: tuple[str, str], prefect_api_url: str
) -> None:
    name, _ = deployment
    # long enough to be cancelled mid-run on any machine (the silos allow 100 rounds)
    flow_run_id = _trigger(name, prefect_api_url, "--param", "rounds=100")
    run_id = _past_round_one(fed, flow_run_id)
    _prefect(prefect_api_url, "flow-run", "cancel", flow_run_id)  # an operator (or the UI)
    _wait_state(fed, prefect_api_url, flow_run_id, "CANCELLED")

    def service_run_ended() -> tuple[str, str] | None:
        [(status, reason)] = query(
            fed.db_url, "SELECT status, reason FROM runs WHERE id = :r", r=run_id
        )
        return (status, reason) if status != "running" else None

    status, reason = fed.wait(service_run_ended, "the service run to end")
    assert status == "cancelled", (status, reason)  # not failed later as abandoned
    assert f"Prefect flow run {flow_run_id} was cancelled" in reason
    # its silos left it: the next run trains with all of them
    nxt = _trigger(name, prefect_api_url)
    _wait_state(fed, prefect_api_url, nxt, "COMPLETED")
    [(_, nxt_status)] = _runs_of(fed, nxt)
    assert nxt_status == "finished"
