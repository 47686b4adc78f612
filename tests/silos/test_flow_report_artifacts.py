"""A silo's table artifacts are sent in the background, in order, linked to the flow and task
run they were made in, and all sent when `drain()` returns (the flow run's end); a validation
table only when the result changed, the metrics table at most every `METRICS_EVERY_S` (the last
one at `drain()`); the task runs of a silo's flow run carry no tags."""

from __future__ import annotations

from typing import Any
from uuid import UUID, uuid4

from prefect import flow, tags, task
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterFlowRunId,
    FlowRunFilter,
    FlowRunFilterId,
)
from prefect.runtime import flow_run
from support.fault_helpers import wait_until

from schemas.wire import Metrics, ValidationSummary
from silos import flow_report

SILO = "probe-artifacts"


def _summary(success: bool) -> ValidationSummary:
    return ValidationSummary(
        contract="heart_disease",
        contract_version="1.0.0",
        contract_sha256="c" * 64,
        data_sha256="d" * 64,
        n_rows=303,
        n_expectations=54,
        success=success,
    )


@task
def _validate(run_id: str, round_: int, success: bool) -> bool:
    return flow_report.validation_artifact(SILO, run_id, round_, _summary(success=success))


PASSED = [True, True, False, False]  # rounds 1-4: the result changes once, in round 3


@flow
def _rounds() -> tuple[str, list[bool]]:
    run_id = uuid4().hex  # the "changed" memory is per (silo, run)
    rows: list[dict[str, Any]] = []
    sent = []
    for r, success in enumerate(PASSED, start=1):
        sent.append(_validate(run_id, r, success))
        row = flow_report.metrics_row(r, Metrics(n_test=10, loss=1.0 / r, accuracy=0.5))
        assert row is not None
        rows.append(row)
        flow_report.metrics_artifact(SILO, run_id, rows)
    flow_report.drain()
    return str(flow_run.get_id()), sent


def test_artifacts_arrive_in_order_linked_to_their_runs(prefect_api_url: str) -> None:
    flow_run_id, sent = _rounds()
    assert sent == [True, False, True, False]
    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(
                flow_run_id=ArtifactFilterFlowRunId(any_=[UUID(flow_run_id)])
            )
        )
    by_key: dict[str, list[Any]] = {}
    for a in sorted(artifacts, key=lambda a: a.created):
        by_key.setdefault(str(a.key), []).append(a)
    assert sorted(by_key) == [f"{SILO}-metrics", f"{SILO}-validation"]
    validations = by_key[f"{SILO}-validation"]
    assert [a.description.split(":")[0] for a in validations] == [
        f"silo {SILO}, round {r}" for r in (1, 3)
    ]
    assert "FAILED" in validations[-1].description
    assert all(a.task_run_id is not None for a in validations)  # made inside the task run
    metrics = by_key[f"{SILO}-metrics"]
    # the first round's at once; rounds 2-4 came within METRICS_EVERY_S: the last at drain()
    assert len(metrics) == 2 and all(a.task_run_id is None for a in metrics)
    assert '"round": 2' not in str(metrics[0].data)
    assert '"round": 4' in str(metrics[-1].data)  # the last version holds every round


@task(name="probe-untagged")
def _untagged() -> None:
    pass


@task(name="probe-tagged")
def _tagged() -> None:
    pass


@flow
def _tagged_flow() -> str:
    _tagged()  # the caller's tags reach the task runs, as they did for every silo task run
    with flow_report.untagged_task_runs():
        _untagged()
    return str(flow_run.get_id())


def test_task_runs_in_untagged_task_runs_carry_no_tags(prefect_api_url: str) -> None:
    """The flow run keeps its tags; only the task runs inside `untagged_task_runs` lose them
    (each tagged task run costs a concurrency-slot request to Prefect's server)."""
    with tags("silo:probe", f"run:{uuid4().hex}"):
        flow_run_id = _tagged_flow()

    def task_runs() -> dict[str, Any] | None:
        with get_client(sync_client=True) as client:
            runs = client.read_task_runs(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[UUID(flow_run_id)]))
            )
        by_name = {r.name.rsplit("-", 1)[0]: r for r in runs}  # "<task name>-<suffix>"
        return by_name if {"probe-tagged", "probe-untagged"} <= set(by_name) else None

    runs = wait_until(task_runs, 120, "both task runs in Prefect's API")
    assert runs["probe-untagged"].tags == []
    assert "silo:probe" in runs["probe-tagged"].tags  # the control: tags do reach task runs
    with get_client(sync_client=True) as client:
        assert "silo:probe" in client.read_flow_run(UUID(flow_run_id)).tags
