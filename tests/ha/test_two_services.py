"""High availability: two aggregation-service processes on different ports share one
PostgreSQL database (and one workspace folder: the service key and model files). Silo agents
and the coordinator get both addresses; with FEDSILO_SERVICE_SPREAD=1 every client sends each
request to the next address in turn, so consecutive requests of one round land on different
processes, and a killed process is failed over at once."""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path

import pytest
from support.fault_helpers import (
    Federation,
    assert_every_model_is_its_round_mean,
    assert_ledger_verifies,
    current_round,
    join,
    start_federation,
    train_in_thread,
    updates_per_round,
)

# generous: the module fixture (processes, a warm-up run) counts toward its first test
pytestmark = [pytest.mark.integration, pytest.mark.postgres, pytest.mark.timeout(1800)]
SILOS = ("cleveland", "hungary", "va_long_beach")
REQUEST = re.compile(r'"(GET|POST|PUT) (/v1/\S+) HTTP/1.1" (\d+)')


@pytest.fixture(scope="module")
def fed(
    tmp_path_factory: pytest.TempPathFactory,
    prefect_api_url: str,
    pg_database_factory: Callable[[], AbstractContextManager[str]],
) -> Iterator[Federation]:
    before = os.environ.get("FEDSILO_SERVICE_SPREAD")
    os.environ["FEDSILO_SERVICE_SPREAD"] = "1"  # agents inherit it; the flow's client reads it
    try:
        with pg_database_factory() as db_url:
            federation = start_federation(
                tmp_path_factory.mktemp("ha"),
                prefect_api_url,
                db_url,
                silos=SILOS,
                n_services=2,
                access_log=True,
            )
            try:
                yield federation
            finally:
                federation.stop()
    finally:
        if before is None:
            os.environ.pop("FEDSILO_SERVICE_SPREAD", None)
        else:
            os.environ["FEDSILO_SERVICE_SPREAD"] = before


def _requests(fed: Federation, i: int, run_id: str) -> list[tuple[str, str, int]]:
    """(method, path, status) of the run's requests that service process `i` answered."""
    text = (fed.root / "service" / f"access-{i}.log").read_text(errors="replace")
    return [(m, p, int(s)) for m, p, s in REQUEST.findall(text) if run_id in p]


def test_run_completes_while_requests_alternate(fed: Federation, tmp_path: Path) -> None:
    rounds = 2
    thread, outcome = train_in_thread(fed.urls, fed.token, tmp_path, rounds=rounds, deadline_s=600)
    result = join(thread, outcome, fed)
    run_id = result["run_id"]
    assert all(sorted(r["contributors"]) == sorted(SILOS) for r in result["rounds"])
    assert updates_per_round(fed.db_url, run_id) == {1: 3, 2: 3}
    served = [_requests(fed, i, run_id) for i in (0, 1)]
    total = sum(len(r) for r in served)
    coordinator = [[p for _, p, _ in r if p.startswith(f"/v1/runs/{run_id}")] for r in served]
    for i, requests in enumerate(served):
        # each process answered a fair share of the run, silos' posts and coordinator's alike.
        # Each request picks its process at random: the coordinator's whole run (14 requests
        # for 2 rounds: all on one process about once in 8,000 runs) is the share to check;
        # its round requests alone (about six) all went to one process in CI
        assert len(requests) >= total / 5, (i, len(requests), total)
        assert any(m == "POST" and "/secagg/" in p for m, p, _ in requests), i
        assert coordinator[i], (i, [len(c) for c in coordinator])
    assert all(status < 500 for requests in served for _, _, status in requests)
    assert_ledger_verifies(fed)


def test_run_completes_when_one_service_is_killed_mid_round(
    fed: Federation, tmp_path: Path
) -> None:
    """Plain aggregation, so the check is exact: every model is the previous one plus the
    weighted mean of exactly its round's stored updates (none lost, none counted twice)."""
    rounds = 3
    thread, outcome = train_in_thread(
        fed.urls, fed.token, tmp_path, rounds=rounds, secure=False, deadline_s=600
    )
    run_id = fed.wait(
        lambda: (now := current_round(fed)) and now[1] >= 2 and now[0], "round 2 to open"
    )
    fed.services[0].kill9()
    killed_at = len(_requests(fed, 1, run_id))
    result = join(thread, outcome, fed)
    assert result["run_id"] == run_id
    assert all(sorted(r["contributors"]) == sorted(SILOS) for r in result["rounds"])
    assert_every_model_is_its_round_mean(fed.db_url, run_id, rounds, n_silos=len(SILOS))
    assert len(_requests(fed, 1, run_id)) > killed_at  # the survivor carried the run on
    fed.restart_service(0)  # back to two processes (it waits until the new one answers)
