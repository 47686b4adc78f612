"""Long-polls are woken by commits, not by re-reading the database (aggregation/service/wakeup.py):
in one service process on SQLite (an in-process event) and on PostgreSQL (its own NOTIFY)."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy.orm import Session
from support.api_federation import deltas, new_federation, payload
from support.live_service import service_in_thread
from support.wakeup_flow import (
    SAFETY_NET_S,
    WAIT_S,
    WOKEN_WITHIN_S,
    task_and_round_wakes,
    woken_poll,
)

from aggregation.service.wakeup import (
    ALL,
    ANSWER_TABLES,
    ANSWERS,
    answers_only,
    session_topic,
    silos_unaffected,
    topic_of,
)
from schemas.tasks import TrainTask
from schemas.wire import RoundOpen, RoundOut
from silos.client_errors import InvalidPayload

pytestmark = pytest.mark.timeout(300)


def test_writes_wake_only_who_can_care() -> None:
    assert topic_of({"nonces", "silos", "ledger_entries"}) is None  # every signed request
    assert topic_of({"secagg_messages", "nonces"}) == ANSWERS  # a silo's protocol message
    assert topic_of({"secagg_messages", "secagg_shares", "nonces"}) == ANSWERS  # a share one
    assert topic_of({"secagg_messages", "rounds"}) == ALL  # ... that closed its stage
    assert topic_of({"contributions"}) == ALL  # a cyclic round's next silo may be waiting
    assert topic_of({"?"}) == ALL  # a write it cannot name wakes everybody
    # a secure round's masked update: its contribution row is an answer (`answers_only`)
    assert topic_of({"contributions", "secagg_messages"}, ANSWER_TABLES | {"contributions"}) == (
        ANSWERS
    )


def test_a_transaction_can_mark_its_writes_as_answers() -> None:
    plain_update = Session()  # a synchronous round's update: the coordinator's waits only
    answers_only(plain_update, "contributions")
    assert session_topic(plain_update, {"contributions", "ledger_entries", "nonces"}) == ANSWERS
    assert session_topic(plain_update, {"contributions", "rounds"}) == ALL  # it closed a stage
    close = Session()  # a round closed, the run goes on, nothing opened
    silos_unaffected(close)
    assert session_topic(close, {"rounds", "models", "runs", "ledger_entries"}) == ANSWERS
    assert session_topic(close, {"ledger_entries", "nonces"}) is None  # quiet stays quiet
    assert session_topic(Session(), {"rounds", "models"}) == ALL  # unmarked: everybody


@pytest.mark.parametrize(
    "backend", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
)
def test_one_service_wakes_its_long_polls(
    backend: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    db_url = (
        f"sqlite:///{tmp_path}/service.db"
        if backend == "sqlite"
        else request.getfixturevalue("fresh_pg_url")
    )
    with service_in_thread(tmp_path, db_url, poll_interval_s=SAFETY_NET_S) as url:
        task, round_ = task_and_round_wakes(url, url)
    assert isinstance(task.result, TrainTask) and task.result.round == 2
    assert task.after_write_s < WOKEN_WITHIN_S, task
    assert round_.result.complete and round_.result.round == 2
    assert round_.after_write_s < WOKEN_WITHIN_S, round_


def test_a_close_that_opens_the_next_round_wakes_the_silos_at_its_commit(tmp_path: Path) -> None:
    """`RoundClose.then_open`: the round's close opens the next one in its own transaction,
    and that commit wakes the silos' task polls (the close alone wakes only the coordinator:
    without the open's wake the poll below would wait out the 60 s safety net)."""
    with service_in_thread(
        tmp_path, f"sqlite:///{tmp_path}/s.db", poll_interval_s=SAFETY_NET_S
    ) as url:
        fed = new_federation(url)
        for name, client in fed.silos.items():
            client.submit_update(fed.run_id, 1, payload(deltas(hash(name) % 100), fed.run_id, 1))
        closed: dict[str, RoundOut] = {}

        def close() -> None:
            closed["out"] = fed.coord.close_round(fed.run_id, 1, RoundOpen(round=2, deadline_s=60))

        a = fed.silos["a"]
        task = woken_poll(url, lambda: a.next_task(wait_s=WAIT_S, run_id=fed.run_id), close)
        assert isinstance(task.result, TrainTask) and task.result.round == 2
        assert task.after_write_s < WOKEN_WITHIN_S, task
        assert (closed["out"].status, closed["out"].opened_next) == ("aggregated", 2)
        assert [(r.round, r.status) for r in fed.coord.rounds(fed.run_id)] == [
            (1, "aggregated"),
            (2, "open"),
        ]
        # a retried close opens nothing again and is no error
        again = fed.coord.close_round(fed.run_id, 1, RoundOpen(round=2, deadline_s=60))
        assert (again.status, again.opened_next) == ("aggregated", None)
        # only the round after the closed one may be opened, and a refusal changes nothing
        with pytest.raises(InvalidPayload, match="may open round 3, not round 4"):
            fed.coord.close_round(fed.run_id, 2, RoundOpen(round=4, deadline_s=60))
        assert fed.coord.rounds(fed.run_id)[-1].status == "open"
        # a close that fails its round (no update came) opens nothing
        failed = fed.coord.close_round(fed.run_id, 2, RoundOpen(round=3, deadline_s=60))
        assert (failed.status, failed.opened_next) == ("failed", None), failed
        assert [r.round for r in fed.coord.rounds(fed.run_id)] == [1, 2]


def test_a_savepoint_is_no_commit_to_wake_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SQLAlchemy reports a savepoint's release as a commit: a poll woken then re-reads the
    database before the real commit, finds nothing new and waits again (30 s late in CI). Only
    the outer commit wakes, with every table the transaction wrote, the savepoint's among them,
    even after a savepoint that rolled back."""
    from sqlalchemy import column, create_engine, insert, table, text
    from sqlalchemy.orm import sessionmaker

    from aggregation.service import wakeup as module

    engine = create_engine(f"sqlite:///{tmp_path}/w.db")
    factory = sessionmaker(engine)
    hub = module.install(factory, engine)
    woken: list[str] = []
    monkeypatch.setattr(hub, "wake", woken.append)
    with factory() as s:
        s.execute(text("CREATE TABLE contributions (x INTEGER PRIMARY KEY)"))
        s.commit()
        woken.clear()
        rows = table("contributions", column("x"))
        s.execute(insert(rows).values(x=1))
        with s.begin_nested():
            s.execute(insert(rows).values(x=2))
        assert woken == []  # released, not committed
        try:
            with s.begin_nested():
                s.execute(insert(rows).values(x=1))
        except Exception:  # noqa: BLE001 - the duplicate key rolls the savepoint back
            pass
        assert woken == []
        s.commit()
    assert woken == [ALL]  # the outer commit, with what it wrote before the rollback
    engine.dispose()
