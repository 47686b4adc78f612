"""The coordinator flow against a real service and a real Prefect server: it waits for ready
silos before round 1, names the silos a stage still awaits, ends Cancelled when the run is
cancelled, and names its flow runs and chains its tasks so the Prefect UI reads well.

The silos are the silo side's real client (`SiloClient`, Ed25519-signed requests) driven by the
test, so each test decides exactly who is ready and who answers what, and when.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from uuid import UUID

import httpx
import numpy as np
import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    FlowRunFilter,
    FlowRunFilterId,
    LogFilter,
    LogFilterFlowRunId,
)
from prefect.client.schemas.objects import FlowRun, Log, TaskRun
from support.live_service import (
    coordinator,
    enrolled_silo,
    publish_shipped_contract,
    service_in_thread,
)
from support.prometheus import scrape, value
from support.validation import validate

from flows.coordinator import federated_training
from flows.service_client import CoordinatorClient
from schemas import tensors
from schemas.contracts.loader import load_contract
from schemas.specs import AsyncSpec, ModelSpec, SecureAggregationSpec, param_shapes
from schemas.tasks import (
    EvaluateTask,
    RunEndedTask,
    SecAggAdvertiseTask,
    SecAggBufferedTask,
    SecAggConsistencyTask,
    SecAggShareTask,
    SecAggUnmaskTask,
    Task,
    TrainTask,
)
from schemas.wire import Metrics, MetricsReport, ReadyIn, RunOut
from silos import secure_round
from silos.client import SiloClient
from silos.features import FeaturePipeline
from silos.secure_round import advertise

FED = "heartfed"
SILOS = ("alpha", "bravo", "charlie")
N_FEATURES = FeaturePipeline.from_contract(load_contract("heart_disease")).n_features
WAIT_S = 120.0  # the most any step below may take on a loaded 2-core machine


@dataclass
class Hub:
    url: str
    coord: CoordinatorClient
    token_file: Path
    silos: dict[str, SiloClient]
    workspace: Path
    outcome: dict[str, Any] = field(default_factory=dict)


@pytest.fixture
def hub(tmp_path: Path, sqlite_url: str, prefect_api_url: str) -> Iterator[Hub]:
    with service_in_thread(tmp_path / "service", sqlite_url) as url:
        coord = coordinator(url)
        coord.create_federation(FED)
        publish_shipped_contract(coord, FED, "heart_disease")
        silos = {n: enrolled_silo(url, coord, FED, n) for n in SILOS}
        token_file = tmp_path / "admin.token"
        token_file.write_text("test-admin-token")
        token_file.chmod(0o600)
        yield Hub(url, coord, token_file, silos, tmp_path)


def wait_until(check: Callable[[], Any], what: str, timeout_s: float = WAIT_S) -> Any:
    """Poll `check` until it returns something truthy; fail naming `what` at the timeout."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.2)
    pytest.fail(f"timed out after {timeout_s:.0f} s waiting for {what}")


def report_ready(silo: SiloClient) -> None:
    silo.ready(ReadyIn(contract="heart_disease", contract_version="1", validated=True))


def start_flow(hub: Hub, retries: int = 0, **overrides: Any) -> threading.Thread:
    """The coordinator flow in a thread; its final Prefect state lands in `hub.outcome`."""
    params: dict[str, Any] = dict(
        service_urls=[hub.url],
        admin_token_file=str(hub.token_file),
        federation=FED,
        dataset="heart_disease",
        model=ModelSpec(kind="logreg", n_features=N_FEATURES),
        rounds=1,
        min_silos=2,
        round_deadline_s=60.0,
        secure_aggregation=SecureAggregationSpec(enabled=False),
        federation_statistics=False,
        ready_timeout_s=WAIT_S,
        output_dir=str(hub.workspace / "models"),
    )
    params.update(overrides)

    def target() -> None:
        flow = federated_training.with_options(retries=retries, retry_delay_seconds=0)
        hub.outcome["state"] = flow(**params, return_state=True)

    thread = threading.Thread(target=target, name="coordinator-flow", daemon=True)
    thread.start()
    return thread


def the_run(hub: Hub) -> RunOut:
    def running() -> RunOut | None:
        runs = hub.coord.list_runs(FED)
        return runs[0] if runs and runs[0].status == "running" else None

    return wait_until(running, "the coordinator to create and start its run")  # type: ignore[no-any-return]


def task_runs(flow_run_id: str) -> list[TaskRun]:
    with get_client(sync_client=True) as client:
        return client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[UUID(flow_run_id)]))
        )


def flow_run(flow_run_id: str) -> FlowRun:
    with get_client(sync_client=True) as client:
        return client.read_flow_run(UUID(flow_run_id))


def flow_logs(flow_run_id: str) -> list[Log]:
    with get_client(sync_client=True) as client:
        return client.read_logs(
            log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[UUID(flow_run_id)]))
        )


def finish(hub: Hub, thread: threading.Thread) -> Any:
    thread.join(WAIT_S)
    assert not thread.is_alive(), "the coordinator flow did not end"
    return hub.outcome["state"]


def test_round_one_waits_for_a_silo_that_reports_ready_late(hub: Hub) -> None:
    report_ready(hub.silos["alpha"])
    report_ready(hub.silos["bravo"])
    thread = start_flow(hub)
    run = the_run(hub)
    assert run.prefect_flow_run_id

    def waiting_task() -> TaskRun | None:
        runs = [t for t in task_runs(run.prefect_flow_run_id or "") if "wait-for-ready" in t.name]
        return runs[0] if runs and runs[0].state_type == "RUNNING" else None

    wait_until(waiting_task, "the coordinator to wait for the silos")
    assert hub.coord.rounds(run.run_id) == []  # charlie is not ready: no round yet
    report_ready(hub.silos["charlie"])
    first = wait_until(lambda: hub.coord.rounds(run.run_id), "round 1 to open")[0]
    ready_at = {s.name: s.ready_at for s in hub.coord.silos(FED)}["charlie"]
    assert ready_at is not None and first.opened_at >= ready_at
    # round 1's deadline is whole: none of it went by while charlie was getting ready
    assert (first.deadline_at - first.opened_at).total_seconds() == pytest.approx(60.0, abs=1.0)
    hub.coord.cancel_run(run.run_id, "test over")
    assert finish(hub, thread).is_cancelled()


def test_too_few_ready_silos_fail_the_run_naming_the_silos(hub: Hub) -> None:
    report_ready(hub.silos["alpha"])
    state = finish(hub, start_flow(hub, retries=2, ready_timeout_s=3.0))
    assert state.is_failed() and "failed earlier" not in str(state.message)
    # the run failed on the service: a retry could only find it failed, so there is none
    assert flow_run(str(state.state_details.flow_run_id)).run_count == 1
    run = hub.coord.list_runs(FED)[0]
    assert run.status == "failed" and run.reason
    assert "bravo" in run.reason and "charlie" in run.reason and "alpha" not in run.reason
    assert hub.coord.rounds(run.run_id) == []


def test_a_refused_run_fails_once_without_prefect_retries(hub: Hub) -> None:
    """The service refuses a secure run of one silo (409): the same on every try, so the flow
    run, deployed with retries as `federated_training` is, is not retried."""
    secure = SecureAggregationSpec(enabled=True)
    thread = start_flow(hub, retries=2, min_silos=1, silos=["alpha"], secure_aggregation=secure)
    state = finish(hub, thread)
    assert state.is_failed() and "secure aggregation needs at least 2" in str(state.message)
    assert flow_run(str(state.state_details.flow_run_id)).run_count == 1
    assert hub.coord.list_runs(FED) == []  # nothing was created


def test_cancelled_run_ends_the_flow_run_cancelled_with_its_name_and_tags(hub: Hub) -> None:
    for silo in hub.silos.values():
        report_ready(silo)
    thread = start_flow(hub)
    run = the_run(hub)
    wait_until(lambda: hub.coord.rounds(run.run_id), "round 1 to open")
    hub.coord.cancel_run(run.run_id, "operator stopped it")
    state = finish(hub, thread)
    assert state.is_cancelled(), state
    assert "operator stopped it" in (state.message or "")
    fr = flow_run(run.prefect_flow_run_id or "")
    assert fr.state_type == "CANCELLED"
    assert fr.name == f"{FED}-heart_disease-logreg-{run.run_id}"
    assert {f"federation:{FED}", "dataset:heart_disease", "model:logreg"} <= set(fr.tags)
    assert f"run:{run.run_id}" in fr.tags
    # the graph reads as a sequence: create-run -> wait-for-ready-silos -> round-1
    # the server records task runs from the client's events, a moment after the flow ended
    wanted = ("create-run", "wait-for-ready-silos", "round-1-train")

    def recorded() -> dict[str, TaskRun] | None:
        runs = {t.name: t for t in task_runs(str(fr.id))}
        found = {w: next((t for n, t in runs.items() if n.startswith(w)), None) for w in wanted}
        return found if all(found.values()) else None  # type: ignore[return-value]

    found = wait_until(recorded, "the flow run's three task runs")
    create, ready, round1 = (found[w] for w in wanted)
    assert {i.id for i in ready.task_inputs["wait_for"]} == {create.id}  # type: ignore[union-attr]
    assert {i.id for i in round1.task_inputs["wait_for"]} == {ready.id}  # type: ignore[union-attr]


def test_deadline_warning_names_only_the_silos_the_stage_awaits(hub: Hub) -> None:
    for silo in hub.silos.values():
        report_ready(silo)
    thread = start_flow(
        # alpha must advertise before the deadline, on a loaded machine too
        hub,
        secure_aggregation=SecureAggregationSpec(enabled=True),
        round_deadline_s=45.0,
    )
    run = the_run(hub)
    alpha = hub.silos["alpha"]

    def advert_task() -> SecAggAdvertiseTask | None:
        task = alpha.next_task(wait_s=5, run_id=run.run_id)
        return task if isinstance(task, SecAggAdvertiseTask) else None

    work = wait_until(advert_task, "alpha's advertise task")
    validate(alpha, run.run_id, 1, n_rows=100)  # as its agent's gate does before answering
    advertise(alpha, alpha.key, work, hub.workspace / "alpha", n_examples=100)
    # every silo is still "waiting" in its update state; only bravo and charlie are awaited
    out = hub.coord.wait_round(run.run_id, 1, 0)
    assert out.awaited == ["bravo", "charlie"]

    def warning() -> str | None:
        texts = [log.message for log in flow_logs(run.prefect_flow_run_id or "")]
        return next((t for t in texts if "deadline passed" in t), None)

    text = wait_until(warning, "the coordinator's deadline warning")
    assert text.endswith("awaited: bravo, charlie"), text
    assert "alpha" not in text
    # one advert is below min_silos: the service fails the round and the flow run fails
    assert finish(hub, thread).is_failed()
    assert hub.coord.get_run(run.run_id).status == "failed"


METRICS = Metrics(n_test=10, loss=0.5, accuracy=0.8, auc=0.9)
LOGREG = ModelSpec(kind="logreg", n_features=N_FEATURES)
DIM = sum(int(np.prod(shape)) for _, shape in param_shapes(LOGREG))


Answer = Callable[[Task], bool]  # False: a task the player does not expect


def play_silo(
    hub: Hub,
    run_id: str,
    name: str,
    answer: Answer,
    errors: list[str],
    coordinator: threading.Thread,
) -> None:
    """Play silo `name` until the run (or the `coordinator` flow) ends: its gate's signed
    statement before its first answer in each round, `answer` for each task, the evaluation."""
    client = hub.silos[name]
    gated = 0
    deadline = time.monotonic() + 3 * WAIT_S
    try:
        while time.monotonic() < deadline and coordinator.is_alive():
            work: Task | None = client.next_task(wait_s=2, run_id=run_id)
            if work is None:
                continue
            if isinstance(work, RunEndedTask):
                return
            if work.round != gated:  # as its agent's gate does
                validate(client, run_id, work.round, n_rows=100)
                gated = work.round
            if isinstance(work, EvaluateTask):
                client.submit_evaluation(run_id, work.round, MetricsReport(metrics=METRICS))
            elif not answer(work):
                errors.append(f"{name}: unexpected task {work!r}")
                return
        if coordinator.is_alive():
            errors.append(f"{name}: the run did not end within {3 * WAIT_S:.0f} s")
    except Exception as exc:  # the test fails on it below, naming the silo
        errors.append(f"{name}: {exc!r}")


def play_run(
    hub: Hub, run_id: str, answers: dict[str, Answer], coordinator: threading.Thread
) -> Any:
    """Every silo played by its `answers` until the coordinator's flow ends; returns the
    flow's final state, completed, with no silo reporting an error."""
    errors: list[str] = []
    players = [
        threading.Thread(
            target=play_silo, args=(hub, run_id, name, answer, errors, coordinator), daemon=True
        )
        for name, answer in answers.items()
    ]
    for player in players:
        player.start()
    state = finish(hub, coordinator)
    for player in players:
        player.join(WAIT_S)
    assert not errors, errors
    assert state.is_completed(), state
    return state


def async_secure_answers(hub: Hub, run_id: str, name: str, silent_in: int) -> Answer:
    """Silo `name` of an asynchronous secure run, with the silo side's own protocol
    functions: train (a small random delta), announce ready, the cohort's stages; stay
    silent in round `silent_in`."""
    client, ws = hub.silos[name], hub.workspace / name
    delta = np.random.default_rng(len(name)).normal(scale=0.01, size=DIM)

    def answer(work: Task) -> bool:
        if isinstance(work, TrainTask):
            if work.round != silent_in:
                client.announce_ready(run_id, work.round, 100)
        elif isinstance(work, SecAggAdvertiseTask):
            secure_round.advertise(client, client.key, work, ws, n_examples=100)
        elif isinstance(work, SecAggShareTask):
            secure_round.share(client, client.key, work, ws)
        elif isinstance(work, SecAggBufferedTask):
            weighted = (work.secagg.weight or 0.0) * delta
            message = secure_round.masked_update(client, client.key, work, ws, weighted)
            client.submit_masked(
                run_id, work.round, message, 100, 0.01, METRICS.model_dump_json(), work.base_round
            )
        elif isinstance(work, SecAggConsistencyTask):
            secure_round.consistency(client, client.key, work, ws)
        elif isinstance(work, SecAggUnmaskTask):
            secure_round.unmask(client, client.key, work, ws)
        else:
            return False
        return True

    return answer


def test_a_failed_asynchronous_buffer_does_not_fail_the_run(hub: Hub) -> None:
    """Buffer 1 fails (only alpha is ready by its deadline, too few to aggregate securely);
    the coordinator records it and opens buffer 2, which starts from the initial model and
    makes version 2, the run's final model."""
    for silo in hub.silos.values():
        report_ready(silo)
    thread = start_flow(
        hub,
        model=LOGREG,
        rounds=2,
        round_deadline_s=15.0,  # buffer 1 waits for it; the drivers answer within it
        secure_aggregation=SecureAggregationSpec(enabled=True, threshold=2, clip=1.0),
        asynchronous=AsyncSpec(buffer_size=3, max_staleness=2),
    )
    run = the_run(hub)
    answers = {
        name: async_secure_answers(hub, run.run_id, name, 0 if name == "alpha" else 1)
        for name in SILOS
    }
    state = play_run(hub, run.run_id, answers, thread)
    result = state.result()
    assert result["final_version"] == 2
    rounds = {r.round: r for r in hub.coord.rounds(run.run_id)}
    assert rounds[1].status == "failed" and "ready by the deadline (alpha)" in (
        rounds[1].reason or ""
    )
    assert rounds[2].status != "failed" and rounds[2].model_version == 2
    assert rounds[2].input_model_version == 0  # buffer 1 made no model
    assert rounds[3].kind == "evaluate" and rounds[3].input_model_version == 2
    assert [r["status"] for r in result["rounds"]][:1] == ["failed"]
    assert hub.coord.get_run(run.run_id).status == "finished"
    entries = hub.coord.ledger(run.run_id)
    failed = [json.loads(e.payload) for e in entries if e.kind == "round_failed"]
    assert [(f["round"], f["kind"]) for f in failed] == [(1, "train")]
    assert "ready by the deadline (alpha)" in failed[0]["reason"]
    assert [e.kind for e in entries].count("aggregate") == 1
    assert (Path(result["model_path"])).exists()

    def buffer_failed() -> str | None:  # Prefect ships a flow's logs in the background
        texts = [log.message for log in flow_logs(run.prefect_flow_run_id or "")]
        return next((t for t in texts if t.startswith("buffer 1 failed")), None)

    wait_until(buffer_failed, "the coordinator's log of the failed buffer")


def plain_answers(hub: Hub, run_id: str, name: str) -> Answer:
    """Silo `name` of a plain synchronous run: an update (small random parameters) each
    training round."""
    client = hub.silos[name]
    rng = np.random.default_rng(len(name))

    def answer(work: Task) -> bool:
        if isinstance(work, TrainTask):
            arrays = {
                n: rng.normal(scale=0.01, size=shape).astype(np.float32)
                for n, shape in param_shapes(LOGREG)
            }
            meta = {"run_id": run_id, "round": str(work.round), "n_examples": "100"}
            client.submit_update(run_id, work.round, tensors.encode(arrays, meta))
            return True
        return False

    return answer


def test_each_close_opens_the_next_round_of_a_plain_run(hub: Hub) -> None:
    """Three training rounds and the evaluation: the coordinator opens round 1 only; each
    later round is opened by the previous round's close (`RoundClose.then_open`), so its
    silos have it at that commit, without the coordinator's next request."""
    for silo in hub.silos.values():
        report_ready(silo)
    thread = start_flow(hub, rounds=3)
    run = the_run(hub)
    state = play_run(hub, run.run_id, {n: plain_answers(hub, run.run_id, n) for n in SILOS}, thread)
    rounds = hub.coord.rounds(run.run_id)
    assert [(r.round, r.kind, r.status) for r in rounds] == [
        (1, "train", "aggregated"),
        (2, "train", "aggregated"),
        (3, "train", "aggregated"),
        (4, "evaluate", "closed"),
    ]
    requests = scrape(
        httpx.get(f"{hub.url}/metrics", headers={"Authorization": "Bearer test-admin-token"}).text
    )
    route = "/v1/runs/{run_id}/rounds"
    assert value(requests, "fedsilo_http_requests_total", method="POST", route=route) == 1
    closes = value(
        requests, "fedsilo_http_requests_total", method="POST", route=route + "/{number}/close"
    )
    assert closes == 4
    records = state.result()["rounds"]
    assert [r["round"] for r in records] == [1, 2, 3, 4]
    assert all(r["wall_seconds"] > 0 for r in records)
