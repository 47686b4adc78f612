"""The silo agent's Prometheus endpoint: `[agent] metrics_port` in silo.toml, the recording
functions the agent calls, and a scrape over HTTP after real long-polls to a live service."""

from __future__ import annotations

import uuid
from pathlib import Path

import httpx
import pytest
from support.live_service import coordinator, enrolled_silo, free_port, service_in_thread
from support.prometheus import scrape, value

from silos import metrics
from silos.config import load_silo_config
from silos.exceptions import SiloConfigError

CONFIG = """
[silo]
name = "cleveland"
federation = "heart"

[data]
path = "data.csv"
contract = "heart_disease"

[service]
urls = ["http://127.0.0.1:8700"]

[agent]
{agent}
"""


def config(tmp_path: Path, agent: str) -> Path:
    path = tmp_path / "silo.toml"
    path.write_text(CONFIG.format(agent=agent))
    return path


def test_metrics_port_is_read_and_checked(tmp_path: Path) -> None:
    cfg = load_silo_config(config(tmp_path, 'metrics_port = 9464\nmetrics_host = "10.0.0.5"'))
    assert cfg.agent.metrics_port == 9464 and cfg.agent.metrics_host == "10.0.0.5"
    assert load_silo_config(config(tmp_path, "")).agent.metrics_port is None  # off by default
    with pytest.raises(SiloConfigError) as err:
        load_silo_config(config(tmp_path, "metrics_port = 70000"))
    assert "key 'agent.metrics_port'" in str(err.value) and "silo.toml" in str(err.value)
    with pytest.raises(SiloConfigError) as err:
        load_silo_config(config(tmp_path, 'metrics_port = "high"'))
    assert "agent.metrics_port" in str(err.value)


def test_agent_metrics_are_served_after_real_polls(sqlite_url: str, tmp_path: Path) -> None:
    silo = f"s{uuid.uuid4().hex[:8]}"  # the registry is per process: a name of its own
    port = free_port()
    stop = metrics.serve_metrics(port)
    assert metrics.serve_metrics(port) is stop  # the same address is served once
    try:
        with service_in_thread(tmp_path / "svc", sqlite_url) as url:
            coord = coordinator(url)
            coord.create_federation("f")
            client = enrolled_silo(url, coord, "f", silo)
            assert metrics.timed_poll(client, wait_s=0.3) is None
            assert metrics.timed_poll(client, wait_s=0) is None
        metrics.round_served(silo, 2.5)
        metrics.round_served(silo, 1.25)
        metrics.declined(silo, "round", "data")
        metrics.run_ended(silo, "COMPLETED")
        metrics.outage_started(silo)
        metrics.outage_ended(12.0, silo)
        page = httpx.get(f"http://127.0.0.1:{port}/metrics")
        assert page.status_code == 200
        m = scrape(page.text)
    finally:
        stop()
    assert value(m, "fedsilo_agent_task_poll_wait_seconds_count", silo=silo, result="empty") == 2
    assert value(m, "fedsilo_agent_task_poll_wait_seconds_sum", silo=silo) >= 0.29  # it waited
    assert value(m, "fedsilo_agent_rounds_served_total", silo=silo) == 2
    assert value(m, "fedsilo_agent_last_round_seconds", silo=silo) == 1.25
    assert value(m, "fedsilo_agent_declines_total", silo=silo, scope="round", cause="data") == 1
    assert value(m, "fedsilo_agent_runs_total", silo=silo, outcome="completed") == 1
    assert value(m, "fedsilo_agent_service_outages_total", silo=silo) == 1
    assert value(m, "fedsilo_agent_service_outage_seconds_sum", silo=silo) == 12.0
    with pytest.raises(httpx.TransportError):  # stopped: the port is closed
        httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=2)
