"""`rounds.anyone_waiting`, the one-query check a coordinator's wait on a round makes each time
an answer wakes it, agrees with the full view's `complete` (`rounds.round_out`) on every mix
of participant statuses and answers, on both backends."""

from __future__ import annotations

import uuid
from datetime import timedelta

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine

from aggregation.service import rounds
from aggregation.service.db import make_sessionmaker, transaction
from aggregation.service.tables import Contribution, Round, Run, RunSilo, utcnow

SILOS = tuple(f"s{i}" for i in range(6))
KINDS = ("update", "evaluation", "declined", "refusal", "sat_out")


def _round(fed_engine: Engine, states: list[tuple[str, str | None]], other_round: bool) -> str:
    """A run whose silos have (run status, this round's answer kind or None); `other_round`:
    every silo also answered round 2, which must not count for round 1."""
    run_id = uuid.uuid4().hex
    with transaction(make_sessionmaker(fed_engine)) as s:
        s.add(Run(id=run_id, federation="f", status="running", spec_json="{}", current_round=2))
        s.flush()
        for number in (1, 2):
            s.add(Round(run_id=run_id, number=number, deadline_at=utcnow() + timedelta(hours=1)))
        s.flush()
        for name, (status, answer) in zip(SILOS, states, strict=False):
            s.add(RunSilo(run_id=run_id, silo=name, status=status))
            if answer is not None:
                s.add(Contribution(run_id=run_id, round=1, silo=name, kind=answer))
            if other_round:
                s.add(Contribution(run_id=run_id, round=2, silo=name, kind="update"))
    return run_id


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    states=st.lists(
        st.tuples(
            st.sampled_from(["active", "refused", "dropped"]),
            st.none() | st.sampled_from(KINDS),
        ),
        min_size=1,
        max_size=len(SILOS),
    ),
    other_round=st.booleans(),
)
def test_anyone_waiting_is_not_complete(
    fed_engine: Engine, states: list[tuple[str, str | None]], other_round: bool
) -> None:
    run_id = _round(fed_engine, states, other_round)
    with transaction(make_sessionmaker(fed_engine)) as s:
        rnd = s.get(Round, (run_id, 1))
        assert rnd is not None
        assert rounds.anyone_waiting(s, run_id, 1) == (not rounds.round_out(s, rnd).complete)


def test_a_silo_that_has_not_answered_is_waited_for(fed_engine: Engine) -> None:
    """The property could hold with both checks wrong alike: the cases by hand."""
    run_id = _round(fed_engine, [("active", "update"), ("active", None)], other_round=True)
    with transaction(make_sessionmaker(fed_engine)) as s:
        assert rounds.anyone_waiting(s, run_id, 1)
        assert not rounds.anyone_waiting(s, run_id, 2)
    run_id = _round(fed_engine, [("active", "update"), ("refused", None)], other_round=False)
    with transaction(make_sessionmaker(fed_engine)) as s:
        assert not rounds.anyone_waiting(s, run_id, 1)
