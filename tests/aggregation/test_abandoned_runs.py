"""A run whose coordinator went away is failed by the service (aggregation/service/abandoned.py)
once its open round is past its deadline by the grace (``abandoned_after_s``, at least the
run's round deadline): at a silo's next poll, at the next run created in its federation and
when a coordinator reads it; its silos are told the run ended. A live coordinator that closes
within the grace, or rejoins its open round, is never cut off.

Over HTTP with a real service on SQLite, with 1 s deadlines and a 2 s grace; every wait polls
for progress with a bound."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from support.api_federation import SPEC, payload
from support.live_service import coordinator, enrolled_silo, service_in_thread
from support.validation import validate_all

from flows.service_client import CoordinatorClient
from schemas import tensors
from schemas.specs import param_shapes
from schemas.tasks import RunEndedTask, TrainTask
from schemas.wire import RoundOpen, RunCreate, RunFinish
from silos.client import SiloClient

GRACE_S = 2.0
DEADLINE_S = 1.0  # the runs' round deadline: the grace is max(GRACE_S, DEADLINE_S)
BOUND_S = 30.0  # the most any wait below may take on a loaded machine


@pytest.fixture(scope="module")
def url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    workspace = tmp_path_factory.mktemp("svc")
    with service_in_thread(
        workspace, f"sqlite:///{workspace}/service.db", abandoned_after_s=GRACE_S
    ) as base:
        yield base


def wait_for(check: Callable[[], Any], what: str) -> Any:
    deadline = time.monotonic() + BOUND_S
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.05)
    pytest.fail(f"timed out after {BOUND_S:.0f} s waiting for {what}")


def past(moment: datetime) -> None:
    """Wait (polling the clock, not the service) until `moment` has passed."""
    wait_for(lambda: datetime.now(UTC) > moment + timedelta(milliseconds=50), f"{moment} to pass")


def federation(url: str) -> tuple[CoordinatorClient, dict[str, SiloClient], str]:
    name = f"f-{uuid.uuid4().hex[:12]}"
    coord = coordinator(url)
    coord.create_federation(name)
    return coord, {n: enrolled_silo(url, coord, name, n) for n in ("a", "b")}, name


def start(
    coord: CoordinatorClient,
    name: str,
    silos: dict[str, SiloClient],
    deadline_s: float = DEADLINE_S,
    round_deadline_s: float | None = None,
) -> tuple[str, Any]:
    """A run in federation `name` (its spec's round deadline `round_deadline_s`, default
    `deadline_s`) with round 1 open for `deadline_s`; its id and round 1."""
    deadline = deadline_s if round_deadline_s is None else round_deadline_s
    spec = SPEC.model_copy(update={"federation": name, "round_deadline_s": deadline})
    run = coord.create_run(RunCreate(spec=spec))
    assert spec.model is not None
    zeros = {n: np.zeros(s, np.float32) for n, s in param_shapes(spec.model)}
    coord.put_initial_model(run.run_id, tensors.encode(zeros))
    coord.start_run(run.run_id)
    first = coord.open_round(run.run_id, RoundOpen(round=1, deadline_s=deadline_s))
    validate_all(silos, run.run_id)
    return run.run_id, first


def submit_all(silos: dict[str, SiloClient], run_id: str, number: int) -> None:
    for i, client in enumerate(silos.values()):
        shapes = param_shapes(SPEC.model)  # type: ignore[arg-type]
        delta = [np.full(s, 0.1 * (i + 1), np.float32) for _, s in shapes]
        client.submit_update(run_id, number, payload(delta, run_id, number))


def ledger_kinds(coord: CoordinatorClient, run_id: str) -> dict[str, dict[str, Any]]:
    return {e.kind: json.loads(e.payload) for e in coord.ledger(run_id)}


def assert_abandoned(
    coord: CoordinatorClient, run_id: str, number: int, grace: float = GRACE_S
) -> None:
    """Run and round failed as abandoned, with the ledger's round_failed and run_failed."""
    rnd = coord.wait_round(run_id, number, 0)
    assert rnd.status == "failed" and rnd.closed_at is not None
    assert (rnd.reason or "").startswith(f"abandoned: its coordinator did not close round {number}")
    run = coord.get_run(run_id)
    assert run.status == "failed" and run.finished_at is not None
    reason = run.reason or ""
    assert reason.startswith(f"abandoned: its coordinator did not close round {number} by ")
    assert f"+ grace {max(grace, DEADLINE_S):.0f} s" in reason
    assert "a coordinator that comes back finds it failed" in reason
    kinds = ledger_kinds(coord, run_id)
    assert kinds["round_failed"]["round"] == number
    assert kinds["round_failed"]["reason"] == rnd.reason
    assert kinds["run_failed"]["status"] == "failed"
    assert kinds["run_failed"]["reason"] == reason
    assert kinds["run_failed"]["final_model_version"] == 0


def test_a_silo_poll_fails_an_abandoned_run_and_leaves_it(url: str) -> None:
    coord, silos, name = federation(url)
    run_id, first = start(coord, name, silos)
    submit_all(silos, run_id, 1)  # the silos answered; the coordinator never closes
    over = first.deadline_at + timedelta(seconds=max(GRACE_S, DEADLINE_S))

    def ended() -> RunEndedTask | None:
        task = silos["a"].next_task(wait_s=0, run_id=run_id)
        if isinstance(task, RunEndedTask):  # not before deadline + grace
            assert datetime.now(UTC) > over
            return task
        return None

    task = wait_for(ended, "silo a's poll to end the abandoned run")
    assert task.run_status == "failed"
    b = silos["b"].next_task(wait_s=0, run_id=run_id)
    assert isinstance(b, RunEndedTask) and b.run_status == "failed"
    assert_abandoned(coord, run_id, 1)
    assert silos["b"].next_task(wait_s=0) is None  # nothing else to do: no other run


def test_creating_a_run_fails_the_federations_abandoned_one(url: str) -> None:
    coord, silos, name = federation(url)
    old, first = start(coord, name, silos)
    other_coord, other_silos, other = federation(url)  # another federation's: left alone
    kept, _ = start(other_coord, other, other_silos)
    past(first.deadline_at + timedelta(seconds=max(GRACE_S, DEADLINE_S)))
    # nobody polled or read the old run since: the next run's creation ends it
    new, _ = start(coord, name, silos, deadline_s=600)  # a live coordinator's
    assert_abandoned(coord, old, 1)
    for client in silos.values():  # the silos leave it, and take the new run's round
        ended = client.next_task(wait_s=0, run_id=old)
        assert isinstance(ended, RunEndedTask) and ended.run_status == "failed"
        task = client.next_task(wait_s=5)
        assert isinstance(task, TrainTask) and task.run_id == new
    assert coord.wait_round(new, 1, 0).status == "open"
    assert coord.wait_round(kept, 1, 0).status == "open"  # not this federation's run


def test_the_coordinator_reading_its_run_finds_it_failed(url: str) -> None:
    coord, silos, name = federation(url)
    run_id, first = start(coord, name, silos)
    past(first.deadline_at + timedelta(seconds=max(GRACE_S, DEADLINE_S)))
    assert coord.wait_round(run_id, 1, 0).status == "open"  # a round's read changes nothing
    run = coord.get_run(run_id)  # what a coordinator that comes back reads first
    assert run.status == "failed" and (run.reason or "").startswith("abandoned: ")
    assert_abandoned(coord, run_id, 1)


def test_a_live_coordinator_within_the_grace_is_never_cut_off(tmp_path: Path) -> None:
    """A coordinator that closes after the deadline but within the grace, round after round,
    while its silos poll all along, finishes its run; another federation's run, abandoned at
    the same time, is failed by its silos' polls. A 10 s grace: the closes below come a moment
    after each deadline, far inside it even on a loaded machine."""
    grace = 10.0
    with service_in_thread(tmp_path, f"sqlite:///{tmp_path}/s.db", abandoned_after_s=grace) as u:
        coord, silos, name = federation(u)
        run_id, first = start(coord, name, silos)
        coord2, silos2, name2 = federation(u)
        gone, gone_first = start(coord2, name2, silos2)
        number, rnd = 1, first
        while True:
            submit_all(silos, run_id, number)
            past(rnd.deadline_at)  # late, but within the grace
            for client in silos.values():  # polls all along: the run goes on
                assert not isinstance(client.next_task(wait_s=0, run_id=run_id), RunEndedTask)
            for client in silos2.values():
                client.next_task(wait_s=0, run_id=gone)
            last = number == SPEC.rounds
            then = None if last else RoundOpen(round=number + 1, deadline_s=DEADLINE_S)
            closed = coord.close_round(run_id, number, then)
            assert closed.status == "aggregated", closed
            if last:
                break
            number += 1
            rnd = coord.wait_round(run_id, number, 0)
            assert rnd.status == "open"
        coord.finish_run(run_id, RunFinish(status="finished", final_model_version=number))
        run = coord.get_run(run_id)
        assert run.status == "finished" and run.reason is None
        assert all(r.status == "aggregated" for r in coord.rounds(run_id))
        assert "run_failed" not in ledger_kinds(coord, run_id)

        past(gone_first.deadline_at + timedelta(seconds=grace))

        def gone_ended() -> bool:
            task = silos2["a"].next_task(wait_s=0, run_id=gone)
            return isinstance(task, RunEndedTask)

        wait_for(gone_ended, "the abandoned run of the other federation to end")
        assert_abandoned(coord2, gone, 1, grace)


def test_a_coordinator_rejoining_its_open_round_gets_a_whole_deadline(url: str) -> None:
    """A resumed coordinator opens its open round again and waits a whole deadline: the
    service's deadline, from which the grace counts, moves with it."""
    coord, silos, name = federation(url)
    run_id, first = start(coord, name, silos)
    past(first.deadline_at)
    again = coord.open_round(run_id, RoundOpen(round=1, deadline_s=30))
    assert again.deadline_at >= first.deadline_at + timedelta(seconds=25)
    past(first.deadline_at + timedelta(seconds=max(GRACE_S, DEADLINE_S)))
    assert not isinstance(silos["a"].next_task(wait_s=0, run_id=run_id), RunEndedTask)
    assert coord.get_run(run_id).status == "running"
    assert coord.wait_round(run_id, 1, 0).status == "open"


def test_the_grace_is_at_least_the_runs_round_deadline(tmp_path: Path) -> None:
    """With a grace setting below the run's round deadline, the round deadline is the grace:
    a slow deployment's long rounds get as long again."""
    with service_in_thread(tmp_path, f"sqlite:///{tmp_path}/s.db", abandoned_after_s=0.5) as u:
        coord, silos, name = federation(u)
        spec = SPEC.model_copy(update={"federation": name, "round_deadline_s": 3.0})
        run = coord.create_run(RunCreate(spec=spec))
        zeros = {n: np.zeros(s, np.float32) for n, s in param_shapes(spec.model)}  # type: ignore[arg-type]
        coord.put_initial_model(run.run_id, tensors.encode(zeros))
        coord.start_run(run.run_id)
        rnd = coord.open_round(run.run_id, RoundOpen(round=1, deadline_s=0.5))
        over = rnd.deadline_at + timedelta(seconds=3)
        past(rnd.deadline_at + timedelta(seconds=1.5))  # past the setting, not the deadline
        ended = isinstance(silos["a"].next_task(wait_s=0, run_id=run.run_id), RunEndedTask)
        if datetime.now(UTC) < over:  # the poll surely came within the grace (a slow machine's
            assert not ended  # may not have: then it shows nothing)
        past(over)
        ended = wait_for(
            lambda: isinstance(silos["a"].next_task(wait_s=0, run_id=run.run_id), RunEndedTask),
            "the run to end past deadline + 3 s",
        )
        assert ended
        assert "+ grace 3 s" in (coord.get_run(run.run_id).reason or "")


def test_a_run_whose_coordinator_stopped_waiting_for_ready_silos_is_failed(url: str) -> None:
    coord, silos, name = federation(url)
    spec = SPEC.model_copy(update={"federation": name, "round_deadline_s": DEADLINE_S})
    run_id = coord.create_run(RunCreate(spec=spec)).run_id
    zeros = {n: np.zeros(s, np.float32) for n, s in param_shapes(spec.model)}  # type: ignore[arg-type]
    coord.put_initial_model(run_id, tensors.encode(zeros))
    coord.start_run(run_id)  # no round yet: the coordinator waits for its silos to be ready
    alive_until = time.monotonic() + 3 * GRACE_S
    while time.monotonic() < alive_until:  # a live coordinator reads every few seconds
        assert coord.get_run(run_id).status == "running"
        time.sleep(0.2)
    last_read = datetime.now(UTC)
    past(last_read + timedelta(seconds=GRACE_S))  # then it dies
    new, _ = start(coord, name, silos, deadline_s=600)  # the next run's creation ends it
    run = coord.get_run(run_id)
    assert run.status == "failed", run
    reason = run.reason or ""
    assert reason.startswith("abandoned: its coordinator stopped reading the run while waiting")
    assert "opened no round" in reason
    kinds = ledger_kinds(coord, run_id)
    assert kinds["run_failed"]["reason"] == reason and "round_failed" not in kinds
    assert coord.get_run(new).status == "running"
