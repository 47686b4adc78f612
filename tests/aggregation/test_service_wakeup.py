"""Long-polls are woken by commits, not by re-reading the database (aggregation/service/wakeup.py):
in one service process on SQLite (an in-process event) and on PostgreSQL (its own NOTIFY)."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy.orm import Session
from support.live_service import service_in_thread
from support.wakeup_flow import SAFETY_NET_S, WOKEN_WITHIN_S, task_and_round_wakes

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
