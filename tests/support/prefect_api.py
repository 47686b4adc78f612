"""Raw calls to a Prefect server's REST API from tests, made the way Prefect's own client makes
them, and a wait for silo flow runs to end.

A Prefect server on SQLite answers 503 when a write loses a race for the database
(SQLITE_BUSY_SNAPSHOT cannot be waited out); Prefect's client retries 429, 502 and 503, so a
test's plain httpx call has to as well, or a busy CI machine fails it.

A silo's flow run ends a little after the run it served: the agent sees the run finished at its
next poll and only then returns from the flow. A check right after the coordinator returns
would race that, so tests wait for the flow runs to reach a final state first.
"""

from __future__ import annotations

import time
from typing import Any

import httpx

RETRIED = frozenset({429, 502, 503})
FINAL = frozenset({"COMPLETED", "FAILED", "CANCELLED", "CRASHED"})


def call(api_url: str, method: str, path: str, body: object = None, retry_s: float = 120) -> Any:
    """One API call; its JSON answer (None when empty). 429/502/503 and a dropped or timed-out
    connection are retried for `retry_s` (the tests' calls are reads, filters and deletes:
    repeating one changes nothing)."""
    deadline = time.monotonic() + retry_s
    pause = 0.25
    while True:
        try:
            resp = httpx.request(method, api_url.rstrip("/") + path, json=body, timeout=60)
        except httpx.TransportError:
            if time.monotonic() > deadline:
                raise
            time.sleep(pause)
            pause = min(pause * 2, 4.0)
            continue
        if resp.status_code not in RETRIED or time.monotonic() > deadline:
            resp.raise_for_status()
            return resp.json() if resp.content else None
        time.sleep(pause)
        pause = min(pause * 2, 4.0)


def flow_runs_named(api_url: str, names: list[str]) -> list[dict[str, Any]]:
    found = call(api_url, "POST", "/flow_runs/filter", {"flow_runs": {"name": {"any_": names}}})
    assert isinstance(found, list)
    return found


def ended_flow_runs(api_url: str, names: list[str], wait_s: float = 600) -> dict[str, str]:
    """{name: final state type} once every named flow run exists and has ended.

    Fails after `wait_s` naming each run's state then; a run stuck Running is the bug this
    catches, so the wait is long enough for a loaded machine and no longer.
    """
    deadline = time.monotonic() + wait_s
    while True:
        states = {r["name"]: str(r["state_type"]) for r in flow_runs_named(api_url, names)}
        if len(states) == len(names) and set(states.values()) <= FINAL:
            return states
        if time.monotonic() > deadline:
            raise AssertionError(f"flow runs not ended after {wait_s:.0f}s: {states} of {names}")
        time.sleep(0.5)
