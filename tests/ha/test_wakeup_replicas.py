"""Two service processes on one PostgreSQL database: a commit on one wakes the long-polls
waiting on the other (LISTEN/NOTIFY, aggregation/service/wakeup.py), in well under the
minute their safety-net re-check would take."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from support.live_service import free_port
from support.wakeup_flow import SAFETY_NET_S, WOKEN_WITHIN_S, task_and_round_wakes

from flows.processes import start_service
from schemas.tasks import TrainTask

pytestmark = [pytest.mark.integration, pytest.mark.postgres, pytest.mark.timeout(600)]
TOKEN = "test-admin-token"


@pytest.fixture
def replicas(fresh_pg_url: str, tmp_path: Path) -> Iterator[tuple[str, str]]:
    env = {
        "FEDSILO_SERVICE_ADMIN_TOKEN": TOKEN,
        "FEDSILO_SERVICE_POLL_INTERVAL_S": str(SAFETY_NET_S),
    }
    procs, urls = [], []
    try:
        for name in ("a", "b"):  # one after the other: the first one migrates the database
            port = free_port()
            procs.append(start_service(tmp_path / name, port, fresh_pg_url, wait_s=180, env=env))
            urls.append(f"http://127.0.0.1:{port}")
        yield urls[0], urls[1]
    finally:
        for p in procs:
            p.stop()


def test_a_commit_on_one_replica_wakes_the_other(replicas: tuple[str, str]) -> None:
    writer, poller = replicas
    task, round_ = task_and_round_wakes(writer, poller)
    assert isinstance(task.result, TrainTask) and task.result.round == 2
    assert task.after_write_s < WOKEN_WITHIN_S, task
    assert round_.result.complete and round_.result.round == 2
    assert round_.after_write_s < WOKEN_WITHIN_S, round_
