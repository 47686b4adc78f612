"""A secure-aggregation answer that asks (``next_wait``, `schemas.tasks.NEXT_WAIT_PARAM`)
brings the silo's next task once the stage closes: the round's later stages take no poll,
and aggregate exactly. An answer whose next task does not come within the wait brings none,
and the silo polls; a poll carrying countersignatures still goes out. Over real HTTP, both
backends."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from support.live_service import recorded
from support.secure_toy import DIM, SILOS, aggregated, secure_toy_run

from flows.service_client import CoordinatorClient
from schemas.tasks import Task
from silos import secure_round
from silos.client import SiloClient

FOLLOW_S = 60.0  # the stage closes when the slowest thread answers: far sooner


@dataclass
class Fed:
    coord: CoordinatorClient
    silos: dict[str, SiloClient]
    run_id: str
    polls: dict[str, list[str]]  # each silo's GET /v1/silo/tasks
    fetches: list[str]  # any silo's GET .../secagg/...


@pytest.fixture
def fed(db_url: str, tmp_path: Path) -> Iterator[Fed]:
    with secure_toy_run(db_url, tmp_path) as (coord, silos, run_id):
        polls: dict[str, list[str]] = {}
        fetches: list[str] = []
        for name, client in silos.items():
            polls[name] = recorded(client, lambda method, path: path.startswith("/v1/silo/tasks"))
            recorded(client, lambda method, path: method == "GET" and "/secagg/" in path, fetches)
        yield Fed(coord, silos, run_id, polls, fetches)


Step = Callable[[SiloClient, Any, Path], object]


def _stages(fed: Fed, ws: Path, steps: list[tuple[str, Step]]) -> None:
    """Every silo, in a thread of its own, takes each step on the task it got next: the
    answers of the stages before the last ask for the next task."""

    def silo(name: str) -> None:
        client = fed.silos[name]
        for i, (kind, step) in enumerate(steps):
            work: Task | None = client.next_task(wait_s=30, run_id=fed.run_id)
            assert work is not None and work.type == kind, (name, work)
            client.follow_wait_s = FOLLOW_S if i < len(steps) - 1 else 0.0
            step(client, work, ws / name)

    with ThreadPoolExecutor(len(fed.silos)) as pool:
        for done in [pool.submit(silo, name) for name in fed.silos]:
            done.result()


def test_each_answer_brings_the_next_stage_and_the_round_aggregates_exactly(
    fed: Fed, tmp_path: Path
) -> None:
    rng = np.random.default_rng(7)
    deltas = {n: rng.uniform(-0.5, 0.5, DIM) for n in SILOS}

    def masked(client: SiloClient, work: Any, where: Path) -> object:
        weighted = deltas[client.silo] * work.secagg.weight
        message = secure_round.masked_update(client, client.key, work, where, weighted)
        answer = client.submit_masked(fed.run_id, 1, message, 100, 0.01, None)
        assert "next_task" not in answer and answer["receipt"]  # kept by the client
        return answer

    _stages(
        fed,
        tmp_path / "silo-ws",
        [
            ("secagg_advertise", lambda c, w, d: secure_round.advertise(c, c.key, w, d, 100)),
            ("secagg_share", lambda c, w, d: secure_round.share(c, c.key, w, d)),
            ("secagg_masked", masked),
            ("secagg_unmask", lambda c, w, d: secure_round.unmask(c, c.key, w, d)),
        ],
    )
    assert all(len(p) == 1 for p in fed.polls.values()), fed.polls  # the first task only
    assert fed.fetches == []  # each stage's messages came inline with its task
    assert fed.coord.close_round(fed.run_id, 1).status == "aggregated"
    flat = aggregated(fed.coord, fed.run_id, 1)
    np.testing.assert_allclose(flat, np.mean(list(deltas.values()), axis=0), atol=1e-4)


def test_an_answer_brings_no_task_that_is_not_ready_and_the_silo_polls(
    fed: Fed, tmp_path: Path
) -> None:
    ws = tmp_path / "silo-ws"
    a = fed.silos["a"]
    first = {n: c.next_task(wait_s=10, run_id=fed.run_id) for n, c in fed.silos.items()}
    a.follow_wait_s = 0.2  # b and c have not advertised: the share stage cannot open
    secure_round.advertise(a, a.key, first["a"], ws / "a", 100)
    for name in ("b", "c"):
        client = fed.silos[name]
        secure_round.advertise(client, client.key, first[name], ws / name, 100)
    work = a.next_task(wait_s=10, run_id=fed.run_id)
    assert work is not None and work.type == "secagg_share"
    assert len(fed.polls["a"]) == 2  # the first task, and this one


def test_a_poll_with_countersignatures_goes_out_though_an_answer_brought_the_task(
    fed: Fed, tmp_path: Path
) -> None:
    ws = tmp_path / "silo-ws"
    first = {n: c.next_task(wait_s=10, run_id=fed.run_id) for n, c in fed.silos.items()}
    b, c = fed.silos["b"], fed.silos["c"]
    secure_round.advertise(b, b.key, first["b"], ws / "b", 100)
    secure_round.advertise(c, c.key, first["c"], ws / "c", 100)
    a = fed.silos["a"]
    a.follow_wait_s = FOLLOW_S  # a's advert closes the stage: its answer brings the task
    secure_round.advertise(a, a.key, first["a"], ws / "a", 100)
    polled = len(fed.polls["a"])
    work = a.next_task(wait_s=10, run_id=fed.run_id, countersigned=[(1, "00" * 64)])
    assert work is not None and work.type == "secagg_share"
    assert len(fed.polls["a"]) == polled + 1  # the countersignature went out on a poll
    assert a.next_task(wait_s=0.2, run_id=fed.run_id) is not None  # polled again: still due
    assert len(fed.polls["a"]) == polled + 2


def test_carried_countersignatures_ride_on_the_next_request_that_asks_for_a_task(
    fed: Fed, tmp_path: Path
) -> None:
    ws = tmp_path / "silo-ws"
    a = fed.silos["a"]
    answers = recorded(a, lambda method, path: method == "POST" and "/secagg/" in path)
    first = a.next_task(wait_s=10, run_id=fed.run_id)
    a.carry_countersigned([(1, "00" * 64)])  # refused by the service (logged), not fatal
    a.follow_wait_s = 0.2
    secure_round.advertise(a, a.key, first, ws / "a", 100)
    assert "countersigned=1." in answers[-1] and a.take_countersigned() == []
    a.carry_countersigned([(2, "00" * 64)])
    a.follow_wait_s = 0.0  # no answer asks for a task: the next poll takes them
    polls = len(fed.polls["a"])
    assert a.next_task(wait_s=0.2, run_id=fed.run_id) is None
    assert "countersigned=2." in fed.polls["a"][polls] and a.take_countersigned() == []
