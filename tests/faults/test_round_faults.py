"""Faults in the middle of a training run, with real processes on 127.0.0.1: a silo that stops
answering (SIGSTOP), the service killed with SIGKILL while it unmasks, a silo agent killed and
restarted, PostgreSQL restarted. Every run must complete with each update counted once.

One federation (the service on a PostgreSQL cluster of this module's own, three hospitals'
agents, Switzerland's data made slow to train) serves every test in turn; each test leaves
every process running again.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.fault_helpers import (
    Federation,
    assert_every_model_is_its_round_mean,
    assert_ledger_verifies,
    current_round,
    join,
    ledger_kinds,
    secagg_sent,
    start_federation,
    train,
    train_in_thread,
    updates_per_round,
)
from support.pg_cluster import PgCluster

# generous: the module fixture (processes, a warm-up run) counts toward its first test
pytestmark = [pytest.mark.integration, pytest.mark.postgres, pytest.mark.timeout(1800)]
SILOS = ("cleveland", "hungary", "switzerland")
SLOW = "switzerland"


@pytest.fixture(scope="module")
def fed(
    tmp_path_factory: pytest.TempPathFactory, prefect_api_url: str, own_pg_cluster: PgCluster
) -> Iterator[Federation]:
    federation = start_federation(
        tmp_path_factory.mktemp("faults"),
        prefect_api_url,
        own_pg_cluster.url,
        silos=SILOS,
        slow=SLOW,
    )
    try:
        # a first run with a generous deadline: each agent loads its libraries and validates
        # its data once, so the tests' short deadlines time out only the silos they stop
        train(
            federation.urls, federation.token, federation.root / "warm-up", rounds=1, deadline_s=600
        )
        yield federation
    finally:
        federation.stop()


def _running_round(fed: Federation, stage: str, silo: str) -> tuple[str, int]:
    """Wait until `silo` has sent its `stage` message in the current round; (run, round)."""

    def sent() -> tuple[str, int] | None:
        now = current_round(fed)
        if now is None or now[3] != "open":
            return None
        run_id, number = now[0], now[1]
        return (run_id, number) if secagg_sent(fed.db_url, run_id, number, stage, silo) else None

    return fed.wait(sent, f"{silo} to send its {stage} message")  # type: ignore[no-any-return]


def test_silo_that_stops_answering_is_timed_out_and_recovered(
    fed: Federation, tmp_path: Path
) -> None:
    """SIGSTOP after the silo shared its keys: the round waits until its deadline, then the
    survivors' shares unmask the sum without it."""
    # long enough for the two others to train and send their masked updates on a loaded
    # machine (the stage the deadline closes), short enough to keep the test quick
    deadline_s = 75.0
    thread, outcome = train_in_thread(
        fed.urls, fed.token, tmp_path, rounds=1, min_silos=2, deadline_s=deadline_s
    )
    run_id, number = _running_round(fed, "share", SLOW)
    fed.sigstop(SLOW)
    try:
        fed.wait(
            lambda: (now := current_round(fed)) and (now[1], now[3]) != (number, "open"),
            "the round to close without the stopped silo",
        )
    finally:
        fed.sigcont(SLOW)  # its late answer is refused; it answers again from the next round on
    result = join(thread, outcome, fed)
    first = result["rounds"][0]
    assert sorted(first["contributors"]) == ["cleveland", "hungary"]
    assert first["wall_seconds"] >= deadline_s * 0.95  # closed by the deadline, not an answer
    # resumed, the agent outlives the round it missed and takes up the run's next round: either
    # its late answer was refused and it rejoins ("joining run ... at round N+1"), or its poll
    # was still waiting and the next task it got is round N+1's (whether it is in time for that
    # round's deadline depends on the machine's load)
    log = fed.agents[SLOW].log_path
    next_round = re.compile(rf"round[ -]{number + 1}\b")
    fed.wait(
        lambda: next_round.search(log.read_text(errors="replace")),
        "the resumed silo to take up the run's next round",
    )
    assert fed.agents[SLOW].alive()
    kinds = ledger_kinds(fed, run_id)
    assert "dropout" in kinds and "recovery" in kinds
    assert updates_per_round(fed.db_url, run_id) == {1: 2}


def test_service_killed_mid_unmasking_then_restarted(fed: Federation, tmp_path: Path) -> None:
    """Cleveland is held (SIGSTOP) after its masked update, so the round waits in the unmask
    stage; the service is killed there with some unmask answers stored, and restarted."""
    rounds = 2
    thread, outcome = train_in_thread(fed.urls, fed.token, tmp_path, rounds=rounds, deadline_s=300)
    run_id, number = _running_round(fed, "masked", "cleveland")
    fed.sigstop("cleveland")
    try:
        fed.wait(
            lambda: secagg_sent(fed.db_url, run_id, number, "unmask", "hungary"),
            "the round to reach its unmask stage",
        )
        assert current_round(fed) == (run_id, number, "unmask", "open")
        fed.services[0].kill9()
        fed.restart_service()
    finally:
        fed.sigcont("cleveland")
    result = join(thread, outcome, fed)
    assert all(sorted(r["contributors"]) == list(SILOS) for r in result["rounds"])
    assert updates_per_round(fed.db_url, run_id) == {n: 3 for n in range(1, rounds + 1)}
    kinds = ledger_kinds(fed, run_id)
    assert kinds.count("aggregate") == rounds and kinds.count("model_saved") == rounds + 1
    assert_ledger_verifies(fed)


def test_silo_agent_killed_and_restarted_rejoins(fed: Federation, tmp_path: Path) -> None:
    """The slow silo's agent is killed (SIGKILL) while it trains; started again, it rejoins
    the run and contributes to every later round."""
    rounds = 3
    thread, outcome = train_in_thread(
        fed.urls, fed.token, tmp_path, rounds=rounds, min_silos=2, deadline_s=300
    )
    run_id, number = _running_round(fed, "share", SLOW)
    assert number == 1
    fed.agents[SLOW].kill9()
    fed.restart_agent(SLOW)
    result = join(thread, outcome, fed)
    training = [r for r in result["rounds"] if r["kind"] == "train"]
    assert len(training) == rounds
    for record in training[1:]:
        assert SLOW in record["contributors"], record
    counts = updates_per_round(fed.db_url, run_id)
    assert counts[2] == counts[3] == 3 and counts[1] in (2, 3), counts
    assert fed.agents[SLOW].alive()


def test_postgres_restarted_mid_run(
    fed: Federation, own_pg_cluster: PgCluster, tmp_path: Path
) -> None:
    """The database goes away for a few seconds in round 2; services and clients retry, and
    every model is exactly the previous one plus the mean of its round's stored updates."""
    rounds = 3
    thread, outcome = train_in_thread(
        fed.urls, fed.token, tmp_path, rounds=rounds, secure=False, deadline_s=600
    )
    run_id = fed.wait(
        lambda: (now := current_round(fed)) and now[1] >= 2 and now[0], "round 2 to open"
    )
    own_pg_cluster.stop_server()
    time.sleep(3.0)  # the outage itself: the database stays away for a few seconds
    own_pg_cluster.start_server()
    result = join(thread, outcome, fed)
    assert result["run_id"] == run_id
    assert all(sorted(r["contributors"]) == list(SILOS) for r in result["rounds"])
    assert_every_model_is_its_round_mean(fed.db_url, run_id, rounds, n_silos=len(SILOS))
