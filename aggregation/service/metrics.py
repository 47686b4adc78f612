"""The service's Prometheus metrics: one `ServiceMetrics` (its own registry) per app.

Tests run several apps in one process, so nothing registers in prometheus_client's global
registry. Code deep in the service reaches its app's metrics through the session factory:
`observability.install` puts them in the sessionmaker's ``info``, which every `Session` it
makes copies (`metrics_of`). A factory made outside an app (tools, tests) carries none, and
the helpers then do nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from sqlalchemy.orm import Session, sessionmaker

INFO_KEY = "fedsilo_metrics"

ROUND_BUCKETS = (0.1, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 7200)
STAGE_BUCKETS = (0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600)
POLL_BUCKETS = (0.005, 0.05, 0.1, 0.5, 1, 2, 5, 10, 20, 30, 60)
HTTP_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
DB_BUCKETS = (0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 5)


@dataclass
class ServiceMetrics:
    """Every metric the service exports; names are documented in infra/README.md."""

    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        r = self.registry
        self.rounds_opened = Counter(
            "fedsilo_rounds_opened", "Rounds opened, by mode and kind", ["mode", "kind"], registry=r
        )
        self.rounds_closed = Counter(
            "fedsilo_rounds_closed",
            "Rounds closed, by mode and final status (aggregated, closed, failed)",
            ["mode", "status"],
            registry=r,
        )
        self.round_seconds = Histogram(
            "fedsilo_round_duration_seconds",
            "Round duration from opening to closing (database timestamps)",
            ["mode", "status"],
            buckets=ROUND_BUCKETS,
            registry=r,
        )
        self.secagg_stage_seconds = Histogram(
            "fedsilo_secagg_stage_duration_seconds",
            "Secure-aggregation stage durations (advertise, share, masked, consistency, unmask)",
            ["stage"],
            buckets=STAGE_BUCKETS,
            registry=r,
        )
        self.hist_stage_seconds = Histogram(
            "fedsilo_secure_hist_stage_duration_seconds",
            "Secure-hist session stage durations (advertise, masked, consistency, unmask)",
            ["stage"],
            buckets=STAGE_BUCKETS,
            registry=r,
        )
        self.declines = Counter(
            "fedsilo_round_declines",
            "Silos that answered a round without an update: declined (signed, with its "
            "cause), sat_out (failed validation), refusal (refused the run)",
            ["kind", "cause"],
            registry=r,
        )
        self.rejections = Counter(
            "fedsilo_rejections",
            "Refused silo submissions, by reason code (rejection_counts has the details)",
            ["reason"],
            registry=r,
        )
        self.poll_wait_seconds = Histogram(
            "fedsilo_task_poll_wait_seconds",
            "How long a silo waited for its next task (a task poll, or an answer that asked for "
            "it), and whether one came",
            ["result"],
            buckets=POLL_BUCKETS,
            registry=r,
        )
        self.http_requests = Counter(
            "fedsilo_http_requests",
            "HTTP requests, by method, route template and status",
            ["method", "route", "status"],
            registry=r,
        )
        self.http_seconds = Histogram(
            "fedsilo_http_request_duration_seconds",
            "HTTP request duration, by method and route template",
            ["method", "route"],
            buckets=HTTP_BUCKETS,
            registry=r,
        )
        self.db_seconds = Histogram(
            "fedsilo_db_statement_duration_seconds",
            "Database statement latency, by statement type",
            ["operation"],
            buckets=DB_BUCKETS,
            registry=r,
        )
        self.ready = Gauge(
            "fedsilo_ready", "1 when the last /readyz check passed, else 0", registry=r
        )
        self.long_polls_waiting = Gauge(
            "fedsilo_long_polls_waiting",
            "Long-polls (silo tasks, round waits) waiting for a wake-up now",
            registry=r,
        )


def metrics_of(holder: Session | sessionmaker[Session]) -> ServiceMetrics | None:
    """The app's metrics a session (or its factory) carries; None outside an app."""
    if isinstance(holder, Session):
        found = holder.info.get(INFO_KEY)
    else:
        found = holder.kw.get("info", {}).get(INFO_KEY)
    return found if isinstance(found, ServiceMetrics) else None


def count_rejection(factory: sessionmaker[Session], reason: str) -> None:
    """One refused submission with reason code `reason` (an `ErrorCode` value)."""
    m = metrics_of(factory)
    if m is not None:
        m.rejections.labels(reason).inc()


def observe_poll(factory: sessionmaker[Session], seconds: float, got_task: bool) -> None:
    """One task long-poll: how long it waited, and whether it found work."""
    m = metrics_of(factory)
    if m is not None:
        m.poll_wait_seconds.labels("task" if got_task else "empty").observe(seconds)
