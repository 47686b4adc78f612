"""A silo's answer to a round sent twice at once (a retry while the first request still
runs): updates lock no round (routes/dispatch.py), so both requests could find no answer
stored and both insert it; the second INSERT failed its request with a 500 (PostgreSQL:
``UniqueViolation contributions_pkey``). Each now gets what it would get one after the
other: 201 once, then 200 for the same answer (409 for a different one).

A hook makes both requests look for a stored answer before either stores one (they wait
for each other at `open_round_for`, the step after the look), on SQLite and PostgreSQL.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
from support.api_federation import Fed, deltas, new_federation, payload
from support.live_service import silo_key

from aggregation.service import contributions
from schemas.wire import Metrics, MetricsReport, RoundOpen
from silos.client import SiloClient
from silos.client_errors import ClientError, ServiceRejected

MEET_WAIT_S = 10.0


def _client(fed: Fed, name: str) -> SiloClient:
    """A client of silo `name` that retries nothing: a 500 is its answer."""
    return SiloClient(
        fed.url, federation=fed.federation, silo=name, key=silo_key(name), retry_for_s=0
    )


def _meet_after_looking(monkeypatch: pytest.MonkeyPatch, where: str = "open_round_for") -> None:
    """Two requests meet at their first call of `contributions.<where>`, which each makes
    after looking for a stored answer and before storing its own."""
    barrier = threading.Barrier(2)
    met: set[int] = set()
    original = getattr(contributions, where)

    def meet(*args: Any, **kwargs: Any) -> Any:
        if threading.get_ident() not in met:
            met.add(threading.get_ident())
            try:
                barrier.wait(MEET_WAIT_S)
            except threading.BrokenBarrierError:
                pass  # the other request went its own way (the test's assertions say how)
        return original(*args, **kwargs)

    monkeypatch.setattr(contributions, where, meet)


def _together(*calls: Callable[[], Any]) -> list[Any]:
    """Run `calls` in threads at once: each one's result, or the error it raised."""
    answers: list[Any] = [None] * len(calls)

    def run(i: int) -> None:
        try:
            answers[i] = calls[i]()
        except ClientError as exc:
            answers[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(calls))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return answers


def _no_5xx(answers: list[Any]) -> None:
    failed = [
        a for a in answers if isinstance(a, ClientError) and not isinstance(a, ServiceRejected)
    ]
    assert not failed, failed


def test_one_update_sent_twice_at_once_is_stored_once(
    api_service_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    fed = new_federation(api_service_url)
    body = payload(deltas(1), fed.run_id, 1)
    clients = [_client(fed, "a"), _client(fed, "a")]
    _meet_after_looking(monkeypatch)
    answers = _together(*[lambda c=c: c.submit_update(fed.run_id, 1, body) for c in clients])
    _no_5xx(answers)
    assert sorted(a["duplicate"] for a in answers) == [False, True], answers
    assert answers[0]["digest"] == answers[1]["digest"]
    monkeypatch.undo()
    assert _client(fed, "a").submit_update(fed.run_id, 1, body)["duplicate"] is True
    states = {s.silo: s.state for s in fed.coord.wait_round(fed.run_id, 1, 0).silos}
    assert states["a"] != "waiting", states


def test_two_updates_sent_at_once_give_201_and_409(
    api_service_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    fed = new_federation(api_service_url)
    bodies = [payload(deltas(1), fed.run_id, 1), payload(deltas(2), fed.run_id, 1)]
    _meet_after_looking(monkeypatch)
    answers = _together(
        *[lambda b=b: _client(fed, "a").submit_update(fed.run_id, 1, b) for b in bodies]
    )
    _no_5xx(answers)
    refused = [a for a in answers if isinstance(a, ServiceRejected)]
    assert len(refused) == 1 and refused[0].status == 409, answers
    assert "a second, different update is refused" in refused[0].detail


def test_one_sit_out_sent_twice_at_once_is_recorded_once(
    api_service_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    fed = new_federation(api_service_url)
    _meet_after_looking(monkeypatch)
    answers = _together(
        *[lambda: _client(fed, "c").sit_out(fed.run_id, 1, "data failed validation")] * 2
    )
    _no_5xx(answers)
    assert not any(isinstance(a, ServiceRejected) for a in answers), answers


def test_one_evaluation_sent_twice_at_once_is_stored_once(
    api_service_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    fed = new_federation(api_service_url)
    for i, name in enumerate(("a", "b", "c")):
        fed.silos[name].submit_update(fed.run_id, 1, payload(deltas(i), fed.run_id, 1))
    assert fed.coord.close_round(fed.run_id, 1).status == "aggregated"
    fed.coord.open_round(fed.run_id, RoundOpen(round=2, kind="evaluate", deadline_s=60))
    report = MetricsReport(metrics=Metrics(n_test=10, loss=0.5))
    _meet_after_looking(monkeypatch)
    answers = _together(*[lambda: _client(fed, "a").submit_evaluation(fed.run_id, 2, report)] * 2)
    _no_5xx(answers)
    assert answers == [None, None], answers  # 201 and 200 (a duplicate): no refusal


def test_a_refusal_and_an_update_at_once_answer_as_one_after_the_other(
    api_service_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The refusal locks the run, the update does not. They meet before the refusal takes
    the run's lock (its first `get_run`) and after the update looked for silo a's answer in
    round 1 (its `open_round_for` reads the run); the update then takes its time checking
    its payload, so the refusal looks too before the update stores anything. Both then
    store an answer of silo a in round 1: the second answers as it would after the first
    (the refusal: refused, the update its round answer; the update: 409)."""
    fed = new_federation(api_service_url)
    body = payload(deltas(1), fed.run_id, 1)
    _meet_after_looking(monkeypatch, "get_run")
    checked = contributions.check_n_examples

    def slowly(*args: Any, **kwargs: Any) -> None:
        time.sleep(0.5)
        checked(*args, **kwargs)

    monkeypatch.setattr(contributions, "check_n_examples", slowly)
    answers = _together(
        lambda: _client(fed, "a").refuse(fed.run_id, "policy forbids it"),
        lambda: _client(fed, "a").submit_update(fed.run_id, 1, body),
    )
    _no_5xx(answers)
    refusal, update = answers
    assert refusal is None, refusal  # the run is refused either way
    assert isinstance(update, ServiceRejected) and update.status == 409, update
    # (on a loaded machine the update may read silo a's membership only once refused)
    assert "already answered round 1" in update.detail or "refused run" in update.detail
