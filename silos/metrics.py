"""The silo agent's Prometheus metrics, served when ``silo.toml`` has ``[agent] metrics_port``.

One registry per process (an agent is one process; the demo's agents share one, so every
metric carries the ``silo`` label). The agent calls the small recording functions below at
its steps; `serve_metrics` exposes them over plain HTTP on ``metrics_host`` (default
127.0.0.1: keep the port private, it needs no credentials and says what the silo does).

Metrics: ``fedsilo_agent_rounds_served_total``, ``fedsilo_agent_runs_total{outcome}``,
``fedsilo_agent_declines_total{scope,cause}``, ``fedsilo_agent_service_outages_total``,
``fedsilo_agent_service_outage_seconds``, ``fedsilo_agent_task_poll_wait_seconds{result}``,
``fedsilo_agent_last_round_seconds`` (all labelled ``silo``).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from schemas.tasks import Task

REGISTRY = CollectorRegistry()
POLL_BUCKETS = (0.05, 0.1, 0.5, 1, 2, 5, 10, 20, 30, 60)
OUTAGE_BUCKETS = (1, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 21600)

ROUNDS = Counter(
    "fedsilo_agent_rounds_served",
    "Round steps this silo completed (trained and submitted)",
    ["silo"],
    registry=REGISTRY,
)
RUNS = Counter(
    "fedsilo_agent_runs",
    "Runs this silo's part ended, by outcome (the flow run's state: completed, failed, ...)",
    ["silo", "outcome"],
    registry=REGISTRY,
)
DECLINES = Counter(
    "fedsilo_agent_declines",
    "Signed declines this silo sent, by scope (round, run) and cause",
    ["silo", "scope", "cause"],
    registry=REGISTRY,
)
OUTAGES = Counter(
    "fedsilo_agent_service_outages",
    "Times every aggregation service address failed and the client started retrying",
    ["silo"],
    registry=REGISTRY,
)
OUTAGE_SECONDS = Histogram(
    "fedsilo_agent_service_outage_seconds",
    "How long each service outage lasted, until an address answered again",
    ["silo"],
    buckets=OUTAGE_BUCKETS,
    registry=REGISTRY,
)
POLL_WAIT = Histogram(
    "fedsilo_agent_task_poll_wait_seconds",
    "How long each task long-poll took, and whether it brought work",
    ["silo", "result"],
    buckets=POLL_BUCKETS,
    registry=REGISTRY,
)
LAST_ROUND = Gauge(
    "fedsilo_agent_last_round_seconds",
    "Wall time of this silo's most recent completed round step",
    ["silo"],
    registry=REGISTRY,
)


class _Polling(Protocol):
    silo: str

    def next_task(self, wait_s: float = ..., run_id: str | None = ...) -> Task | None: ...


def timed_poll(client: _Polling, **kwargs: Any) -> Task | None:
    """``client.next_task(**kwargs)``, observing how long it waited and whether it got work."""
    started = time.monotonic()
    work = client.next_task(**kwargs)
    result = "task" if work is not None else "empty"
    POLL_WAIT.labels(client.silo, result).observe(time.monotonic() - started)
    return work


def round_served(silo: str, seconds: float) -> None:
    """A round step completed in `seconds`."""
    ROUNDS.labels(silo).inc()
    LAST_ROUND.labels(silo).set(seconds)


def run_ended(silo: str, outcome: str) -> None:
    """This silo's part of a run ended (`outcome`: the flow run's state name, lower case)."""
    RUNS.labels(silo, outcome.lower()).inc()


def declined(silo: str, scope: str, cause: str) -> None:
    """A signed decline was sent."""
    DECLINES.labels(silo, scope, cause).inc()


def outage_started(silo: str = "") -> None:
    """Every service address failed: the client is retrying (the http client calls this)."""
    OUTAGES.labels(silo).inc()


def outage_ended(seconds: float, silo: str = "") -> None:
    """The service answered again after an outage of `seconds`."""
    OUTAGE_SECONDS.labels(silo).observe(seconds)


_SERVED: dict[tuple[str, int], Callable[[], None]] = {}
_LOCK = threading.Lock()


def serve_metrics(port: int, host: str = "127.0.0.1") -> Callable[[], None]:
    """Serve ``/metrics`` (all agents of this process) on host:port; returns the function
    that stops it. A second call for the same address reuses the running server."""
    with _LOCK:
        if (host, port) in _SERVED:
            return _SERVED[(host, port)]
        server, thread = start_http_server(port, addr=host, registry=REGISTRY)

        def stop() -> None:
            with _LOCK:
                _SERVED.pop((host, port), None)
            server.shutdown()
            server.server_close()
            thread.join(5)

        _SERVED[(host, port)] = stop
        return stop
