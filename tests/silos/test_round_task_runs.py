"""A silo's flow run has one Prefect task run per round (``round-<n>``), holding every step
of that round; a step that fails ends its round's task run Failed and the agent declines
that round, then serves the next one. A decline (`Declined`, a table that failed the gate)
ends it without a traceback in the log: a silo whose table stays broken declines every
round.

The agent's flow (`silo_training`, a real Prefect flow against a real Prefect server) runs
with a real `SiloClient` whose service is `httpx.MockTransport` handing out scripted tasks;
`_ready_data` is replaced by a stub table and the handlers by a recorder, so the test sees
which task run each step ran in.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any
from uuid import UUID

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
from prefect.context import TaskRunContext
from support.fault_helpers import wait_until
from support.scripted_silo import scripted_agent, silo_config

from schemas.specs import ModelSpec, RunSpec
from schemas.tasks import RunEndedTask, SecAggAdvertiseTask, SecAggInfo, SecAggShareTask, Task
from silos import agent
from silos.decline import Declined
from silos.handlers import REGISTRY
from silos.keys import load_or_create_key

SPEC = RunSpec(
    federation="f", dataset="heart_disease", model=ModelSpec(kind="logreg", n_features=35)
)
RUN = "run-rounds"


def _info(stage: str) -> SecAggInfo:
    return SecAggInfo(
        stage=stage,  # type: ignore[arg-type]
        roster=["a", "b", "c"],
        roster_keys={},
        threshold=2,
        dim=4,
        bits=32,
        clip=1.0,
    )


def _round(n: int) -> list[Task]:
    return [
        SecAggAdvertiseTask(run_id=RUN, round=n, spec=SPEC, secagg=_info("advertise")),
        SecAggShareTask(run_id=RUN, round=n, spec=SPEC, secagg=_info("share")),
    ]


def _serve(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    tasks: list[Task],
    fail: dict[tuple[str, int], Exception],
) -> tuple[Any, list[tuple[str, int, str]], list[dict[str, Any]]]:
    """Run `silo_training` over `tasks`; the step (type, round) in `fail` raises. Returns the
    flow run's final state, each step as (type, round, its task run's name), and the
    statements the silo sent."""
    cfg = silo_config(tmp_path)
    key: Ed25519PrivateKey = load_or_create_key(tmp_path / "ws" / "keys" / "silo_ed25519.pem")
    statements: list[dict[str, Any]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/silo/tasks":
            return httpx.Response(200, content=tasks.pop(0).model_dump_json())
        if request.url.path.endswith("/statements"):
            statements.append(json.loads(request.content))
        return httpx.Response(200, json={})

    steps: list[tuple[str, int, str]] = []

    def record(ctx: Any, work: Task) -> None:
        context = TaskRunContext.get()
        steps.append((work.type, work.round, context.task_run.name if context else "(none)"))
        if (work.type, work.round) in fail:
            raise fail[(work.type, work.round)]

    scripted_agent(monkeypatch, key, handler)
    monkeypatch.setattr(REGISTRY, "dispatch", record)
    state = agent.silo_training(config_path=str(cfg), run_id=RUN)
    return state, steps, statements


def test_each_round_is_one_task_run_and_a_failed_step_declines_its_round(
    prefect_api_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    tasks = [*_round(1), *_round(2), *_round(3), *_round(4)]
    tasks.append(RunEndedTask(run_id=RUN, round=4, run_status="finished"))
    fail: dict[tuple[str, int], Exception] = {
        ("secagg_share", 2): RuntimeError("step secagg_share of round 2 broke"),
        ("secagg_advertise", 3): Declined("round", "data", "the table failed the gate"),
    }
    with caplog.at_level(logging.INFO):
        state, steps, statements = _serve(tmp_path, monkeypatch, tasks, fail)
    assert state.is_completed(), state
    assert steps == [
        ("secagg_advertise", 1, "round-1"),
        ("secagg_share", 1, "round-1"),
        ("secagg_advertise", 2, "round-2"),
        ("secagg_share", 2, "round-2"),  # raised: round 2 is declined
        ("secagg_advertise", 3, "round-3"),  # declined: round 3 too, its share never runs
        ("secagg_advertise", 4, "round-4"),
        ("secagg_share", 4, "round-4"),
    ]
    declines = [s for s in statements if s.get("kind") == "decline"]
    assert [(d["payload"]["round"], d["payload"]["cause"]) for d in declines] == [
        (2, "training"),
        (3, "data"),
    ]
    assert "step secagg_share of round 2 broke" in declines[0]["payload"]["reason"]
    assert declines[1]["payload"]["reason"] == "the table failed the gate"

    # the unexpected error's traceback is logged; the decline's is not
    def with_traceback(text: str) -> list[logging.LogRecord]:
        return [
            r
            for r in caplog.records
            if text in r.getMessage() and r.exc_info and r.exc_info[0] is not None
        ]

    assert with_traceback("round 2 broke")
    assert [r for r in caplog.records if "failed the gate" in r.getMessage()]
    assert not with_traceback("failed the gate"), "a decline logged with a traceback"

    flow_run_id = UUID(str(state.state_details.flow_run_id))

    def rounds() -> dict[str, str] | None:  # the server records task runs from events
        with get_client(sync_client=True) as c:
            runs = c.read_task_runs(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
            )
        named = {r.name: str(r.state_type.value if r.state_type else "") for r in runs}
        done = {n: s for n, s in named.items() if n.startswith("round-")}
        return named if len(done) == 4 and all(done.values()) else None

    named = wait_until(rounds, 120, "the flow run's four round task runs")
    assert {n: s for n, s in named.items() if n.startswith("round-")} == {
        "round-1": "COMPLETED",
        "round-2": "FAILED",
        "round-3": "FAILED",
        "round-4": "COMPLETED",
    }
    assert not [n for n in named if "advertise" in n or "share" in n or "validate" in n]
