"""A real `fedsilo silo start` process with `[agent] metrics_port`: its /metrics endpoint is up
from start-up, and its long-polls to a live service show there once it serves."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import httpx
import pytest
from support.live_service import coordinator, free_port, service_in_thread, write_heart_silos
from support.prometheus import scrape, value

from flows.processes import Proc, start_agent

T = TypeVar("T")
pytestmark = pytest.mark.integration


def wait_for(check: Callable[[], T | None], what: str, agent: Proc, limit_s: float = 240) -> T:
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        assert agent.alive(), f"the agent exited:\n{agent.log_tail()}"
        found = check()
        if found:
            return found
        time.sleep(0.2)
    raise AssertionError(f"no {what} within {limit_s:.0f}s; agent log:\n{agent.log_tail()}")


def test_agent_serves_its_metrics(sqlite_url: str, tmp_path: Path, prefect_api_url: str) -> None:
    port = free_port()
    metrics_url = f"http://127.0.0.1:{port}/metrics"

    def page() -> str | None:
        try:
            resp = httpx.get(metrics_url, timeout=2)
        except httpx.TransportError:
            return None
        return resp.text if resp.status_code == 200 else None

    with service_in_thread(tmp_path / "svc", sqlite_url, long_poll_max_s=0.5) as url:
        coord = coordinator(url)
        coord.create_federation("heart")
        configs = write_heart_silos(tmp_path / "silos", [url], prefect_api_url)
        cfg = configs["cleveland"]
        cfg.write_text(cfg.read_text() + f"\n[agent]\nmetrics_port = {port}\n")
        agent = start_agent(cfg, cfg.parent / "agent.log", prefect_api_url)
        try:
            first = wait_for(page, "metrics page", agent)
            assert "fedsilo_agent_task_poll_wait_seconds" in first  # declared from start-up
            wait_for(
                lambda: any(s.name == "cleveland" for s in coord.silos("heart")), "enrolment", agent
            )
            coord.approve("heart", "cleveland")

            def polled() -> float:
                text = page()
                samples = scrape(text) if text else {}
                name = "fedsilo_agent_task_poll_wait_seconds_count"
                return value(samples, name, silo="cleveland", result="empty")

            assert wait_for(polled, "completed long-poll in the agent's metrics", agent) >= 1
        finally:
            agent.stop()
