"""`runs.get_run` and `rounds.get_round` within one request's session, on both backends: a
plain read of a row the session already holds costs no query (a request's handlers ask for
the run up to three times), and a locked read reads the row afresh, so a session that read it
before another transaction's commit decides on the committed state once it holds the lock."""

from __future__ import annotations

import gc
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta

import pytest
from sqlalchemy import Engine, event

from aggregation.service import rounds, runs, tasks
from aggregation.service.db import make_sessionmaker, transaction
from aggregation.service.exceptions import NotFound
from aggregation.service.tables import Round, Run, RunSilo, Silo, utcnow


def _run_with_round(fed_engine: Engine) -> str:
    run_id = uuid.uuid4().hex
    with transaction(make_sessionmaker(fed_engine)) as s:
        s.add(Run(id=run_id, federation="f", status="running", spec_json="{}", current_round=1))
        s.flush()
        s.add(Round(run_id=run_id, number=1, deadline_at=utcnow() + timedelta(hours=1)))
    return run_id


@contextmanager
def _statements(engine: Engine) -> Iterator[list[str]]:
    """The SQL statements `engine` runs meanwhile."""
    seen: list[str] = []

    def note(_conn, _cursor, statement, *_args) -> None:  # type: ignore[no-untyped-def]
        seen.append(statement)

    event.listen(engine, "before_cursor_execute", note)
    try:
        yield seen
    finally:
        event.remove(engine, "before_cursor_execute", note)


def test_a_loaded_run_or_round_is_not_read_again(fed_engine: Engine) -> None:
    run_id = _run_with_round(fed_engine)
    with transaction(make_sessionmaker(fed_engine)) as s, _statements(fed_engine) as seen:
        run = runs.get_run(s, run_id)
        rnd = rounds.get_round(s, run_id, 1)
        first = len(seen)
        assert runs.get_run(s, run_id) is run
        assert rounds.get_round(s, run_id, 1) is rnd
        assert len(seen) == first, seen[first:]
        runs.get_run(s, run_id, for_update=True)  # a lock is always taken by a query
        rounds.get_round(s, run_id, 1, for_update=True)
        assert len(seen) == first + 2


def test_a_missing_run_or_round_is_named(fed_engine: Engine) -> None:
    run_id = _run_with_round(fed_engine)
    with transaction(make_sessionmaker(fed_engine)) as s:
        with pytest.raises(NotFound, match="run 'nope' does not exist"):
            runs.get_run(s, "nope")
        with pytest.raises(NotFound, match=f"round 2 of run {run_id} does not exist"):
            rounds.get_round(s, run_id, 2)
        with pytest.raises(NotFound, match="round 2"):
            rounds.get_round(s, run_id, 2, for_update=True)


@pytest.mark.postgres
@pytest.mark.parametrize("db_url", ["postgres"], indirect=True)
def test_a_locked_read_sees_what_was_committed_after_the_plain_one(fed_engine: Engine) -> None:
    """PostgreSQL only: READ COMMITTED lets a later statement see another transaction's commit
    (a SQLite transaction keeps the snapshot of its first read)."""
    run_id = _run_with_round(fed_engine)
    factory = make_sessionmaker(fed_engine)
    with transaction(factory) as s:
        # held: the session's identity map is weak, and a dropped copy would be read again
        run, rnd = runs.get_run(s, run_id), rounds.get_round(s, run_id, 1)
        assert (run.status, rnd.status) == ("running", "open")
        with transaction(factory) as other:
            runs.get_run(other, run_id).status = "cancelled"
            rounds.get_round(other, run_id, 1).status = "closed"
        assert runs.get_run(s, run_id).status == "running"  # the session's own copy
        assert runs.get_run(s, run_id, for_update=True) is run
        assert rounds.get_round(s, run_id, 1, for_update=True) is rnd
        assert (run.status, rnd.status) == ("cancelled", "closed")


def test_a_run_or_round_the_caller_let_go_of_is_not_read_again(fed_engine: Engine) -> None:
    """The session keeps runs, rounds and memberships it loaded: the identity map alone holds
    rows weakly, so a row dropped by the code that read it was read again (a task poll read
    the run and the round twice each)."""
    run_id = _run_with_round(fed_engine)
    with transaction(make_sessionmaker(fed_engine)) as s, _statements(fed_engine) as seen:
        runs.get_run(s, run_id)
        rounds.get_round(s, run_id, 1)
        gc.collect()
        first = len(seen)
        assert runs.get_run(s, run_id).status == "running"
        assert rounds.get_round(s, run_id, 1).status == "open"
        assert len(seen) == first, seen[first:]


def test_a_poll_reads_run_membership_and_round_in_one_query(fed_engine: Engine) -> None:
    run_id = _run_with_round(fed_engine)
    idle_id = uuid.uuid4().hex  # running, no round opened yet
    with transaction(make_sessionmaker(fed_engine)) as s:
        s.add(Silo(federation="f", name="a", public_key="00"))
        s.add(Run(id=idle_id, federation="f", status="running", spec_json="{}", current_round=0))
        s.flush()
        s.add_all([RunSilo(run_id=run_id, silo="a"), RunSilo(run_id=idle_id, silo="a")])
    with transaction(make_sessionmaker(fed_engine)) as s, _statements(fed_engine) as seen:
        [(run, membership, rnd)] = tasks._memberships(s, "f", "a", run_id)
        assert (run.id, membership.silo, rnd and rnd.number) == (run_id, "a", 1)
        assert len(seen) == 1, seen
        found = {r.id: rnd for r, _m, rnd in tasks._memberships(s, "f", "a", None)}
        assert found.keys() == {run_id, idle_id} and found[idle_id] is None
        assert tasks._memberships(s, "f", "b", run_id) == []  # not a participant
        assert tasks._memberships(s, "g", "a", run_id) == []  # another federation's silo
