"""Long-polls woken by commits (aggregation/service/wakeup.py), measured over HTTP.

The services under test re-check only every minute (poll_interval_s=60), so a long-poll that
answers within seconds was woken by the commit, not by its safety-net re-check. `admin_url`
takes the coordinator's and silos' writes; `poll_url` (another replica, or the same service)
serves the long-polls being woken.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx

from schemas.wire import RoundOpen
from silos.client import SiloClient
from support.api_federation import deltas, new_federation, payload
from support.live_service import coordinator
from support.prometheus import scrape, value

SAFETY_NET_S = 60.0  # the services' poll_interval_s in these tests
WAIT_S = 30.0  # each long-poll's wait: an unwoken poll returns empty after this
WOKEN_WITHIN_S = 5.0


@dataclass
class Woken:
    result: Any
    after_write_s: float  # from the write that should wake it to the poll's answer


def waiting(url: str, token: str = "test-admin-token") -> float:
    """Long-polls the service at `url` has checked once and now wait on (its /metrics)."""
    resp = httpx.get(f"{url}/metrics", headers={"Authorization": f"Bearer {token}"}, timeout=10)
    resp.raise_for_status()
    return value(scrape(resp.text), "fedsilo_long_polls_waiting")


def woken_poll(
    poll_url: str, poll: Callable[[], Any], write: Callable[[], object], deadline_s: float = 60
) -> Woken:
    """Start `poll` (a long-poll to `poll_url`) in a thread, wait until the service says it
    is waiting (its first check found nothing), then `write`; returns what the poll answered
    and how long after the write."""
    out: dict[str, Any] = {}

    def run() -> None:
        out["result"] = poll()
        out["at"] = time.monotonic()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    end = time.monotonic() + deadline_s
    while waiting(poll_url) < 1:
        assert thread.is_alive(), f"the long-poll answered before any write: {out}"
        assert time.monotonic() < end, "the long-poll never started waiting"
        time.sleep(0.02)
    wrote = time.monotonic()
    write()
    thread.join(deadline_s)
    assert not thread.is_alive(), "the long-poll did not return"
    return Woken(out["result"], out["at"] - wrote)


def task_and_round_wakes(admin_url: str, poll_url: str) -> tuple[Woken, Woken]:
    """(1) a silo's task long-poll on `poll_url` woken by the coordinator opening round 2 on
    `admin_url`; (2) the coordinator's round long-poll on `poll_url` woken by the last silo's
    update to `admin_url`."""
    fed = new_federation(admin_url)  # silos a, b, c; round 1 open
    for name, client in fed.silos.items():
        client.submit_update(fed.run_id, 1, payload(deltas(hash(name) % 100), fed.run_id, 1))
    assert fed.coord.close_round(fed.run_id, 1).status == "aggregated"
    a = fed.silos["a"]
    remote_a = SiloClient(poll_url, federation=fed.federation, silo="a", key=a.key, retry_for_s=5)
    task = woken_poll(
        poll_url,
        lambda: remote_a.next_task(wait_s=WAIT_S, run_id=fed.run_id),
        lambda: fed.coord.open_round(fed.run_id, RoundOpen(round=2, deadline_s=60)),
    )
    for name in ("a", "b"):
        fed.silos[name].submit_update(fed.run_id, 2, payload(deltas(7), fed.run_id, 2))
    remote_coord = coordinator(poll_url)
    last = fed.silos["c"]
    round_ = woken_poll(
        poll_url,
        lambda: remote_coord.wait_round(fed.run_id, 2, wait_s=WAIT_S),
        lambda: last.submit_update(fed.run_id, 2, payload(deltas(8), fed.run_id, 2)),
    )
    return task, round_
