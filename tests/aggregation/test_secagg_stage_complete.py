"""The stage-close check in one query (`stage_complete`) against the round-wide sets it replaces
(`waiting_for`), on random mailboxes, on SQLite and PostgreSQL (``db_url``)."""

from __future__ import annotations

import json
import uuid
from datetime import timedelta

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine

from aggregation.service import secure_rounds
from aggregation.service.db import make_sessionmaker, transaction
from aggregation.service.tables import (
    Contribution,
    Round,
    Run,
    RunSilo,
    SecAggMessage,
    utcnow,
)

SILOS = tuple(f"s{i}" for i in range(6))
STAGES = secure_rounds.STAGES


# one silo's state in the round: its run status, in the roster or not, the stages it sent
# (a prefix of the protocol, or any subset: a replica may see rows a stage ahead), and
# whether it has a contribution row (a masked input, a decline or a refusal)
silo_state = st.tuples(
    st.sampled_from(["active", "dropped", "declined"]),
    st.booleans(),
    st.sets(st.sampled_from(STAGES)),
    st.booleans(),
)


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(states=st.lists(silo_state, min_size=1, max_size=len(SILOS)), consistency=st.booleans())
def test_stage_complete_is_nobody_waited_for(
    fed_engine: Engine, states: list[tuple[str, bool, set[str], bool]], consistency: bool
) -> None:
    factory = make_sessionmaker(fed_engine)
    run_id = uuid.uuid4().hex
    silos = SILOS[: len(states)]
    with transaction(factory) as s:
        s.add(Run(id=run_id, federation="f", status="running", spec_json="{}", current_round=1))
        s.flush()  # the round's foreign key: no relationship orders the two inserts
        roster = [n for n, (_, listed, _, _) in zip(silos, states, strict=True) if listed]
        s.add(
            Round(
                run_id=run_id,
                number=1,
                deadline_at=utcnow() + timedelta(hours=1),
                secagg_stage="advertise",
                roster_json=json.dumps({"silos": roster, "consistency_check": consistency}),
            )
        )
        s.flush()
        for name, (status, _, sent, answered) in zip(silos, states, strict=True):
            s.add(RunSilo(run_id=run_id, silo=name, status=status))
            for stage in sent:
                s.add(SecAggMessage(run_id=run_id, round=1, stage=stage, silo=name, payload=b""))
            if answered:
                s.add(Contribution(run_id=run_id, round=1, silo=name, kind="declined"))
    with transaction(factory) as s:
        rnd = s.get(Round, (run_id, 1))
        assert rnd is not None
        for stage in STAGES:
            expected = not secure_rounds.waiting_for(s, rnd, stage)
            assert secure_rounds.stage_complete(s, rnd, stage) == expected, stage


def test_stage_complete_waits_for_an_active_silo_that_has_not_advertised(
    fed_engine: Engine,
) -> None:
    """The property above could hold with both checks wrong alike: one case by hand."""
    factory = make_sessionmaker(fed_engine)
    with transaction(factory) as s:
        s.add(Run(id="r", federation="f", status="running", spec_json="{}", current_round=1))
        s.flush()
        s.add(
            Round(
                run_id="r",
                number=1,
                deadline_at=utcnow() + timedelta(hours=1),
                secagg_stage="advertise",
                roster_json=json.dumps({"silos": ["a", "b"], "consistency_check": False}),
            )
        )
        s.flush()
        s.add_all([RunSilo(run_id="r", silo="a"), RunSilo(run_id="r", silo="b")])
        s.add(SecAggMessage(run_id="r", round=1, stage="advertise", silo="a", payload=b""))
    with transaction(factory) as s:
        rnd = s.get(Round, ("r", 1))
        assert rnd is not None
        assert not secure_rounds.stage_complete(s, rnd, "advertise")  # b has not advertised
        assert not secure_rounds.stage_complete(s, rnd, "share")  # a has not shared
        s.add(Contribution(run_id="r", round=1, silo="b", kind="declined"))
        s.flush()
        assert secure_rounds.stage_complete(s, rnd, "advertise")  # b declined: not awaited
        s.get(RunSilo, ("r", "a")).status = "dropped"  # type: ignore[union-attr]
        s.flush()
        assert secure_rounds.stage_complete(s, rnd, "share")
