"""Round metrics read off the ORM: rounds opened and closed, stage and round durations, and
declines, observed where the engines change rows rather than inside every engine.

`watch` hooks the app's sessionmaker: `before_flush` notes what changed (a round inserted or
moved out of ``open``, a secure-aggregation stage advanced, a secure-hist session stage
advanced, a declining contribution inserted) and `after_commit` counts it, so a rolled-back
transaction counts nothing. Stage starts are kept in memory (one entry per open round or
secure-hist run): a stage is timed by the process that saw it start and end; after a restart
the stage in progress is not timed. Round durations use the rows' own timestamps.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from datetime import datetime
from functools import partial
from typing import Any

from prometheus_client import Histogram
from sqlalchemy import event, inspect
from sqlalchemy.orm import Session, sessionmaker

from aggregation.service.engines.registry import mode_of
from aggregation.service.metrics import ServiceMetrics
from aggregation.service.runs import spec_of
from aggregation.service.tables import Contribution, HistRun, Round, Run, utcnow

log = logging.getLogger("fedsilo.service.metrics")
PENDING = "fedsilo_pending_metrics"
DECLINE_KINDS = ("declined", "sat_out", "refusal")
Pending = list[Callable[[], object]]


def watch(factory: sessionmaker[Session], metrics: ServiceMetrics) -> None:
    """Count round events of every session `factory` makes into `metrics`."""
    tracker = _Tracker(metrics)
    event.listen(factory, "before_flush", tracker.before_flush)
    event.listen(factory, "after_commit", tracker.after_commit)
    event.listen(factory, "after_rollback", tracker.after_rollback)


def _changed(obj: object, attr: str) -> tuple[bool, Any]:
    """(whether `attr` changed in this flush, its previous value or None)."""
    history = inspect(obj).attrs[attr].history
    if not history.has_changes():
        return False, None
    return True, history.deleted[0] if history.deleted else None


class _Tracker:
    """Stage starts are updated at flush time, while the transaction holds the row's lock
    (rows are locked before they change), so concurrent requests see transitions in order;
    only the observations wait for the commit. A rolled-back transition is then not timed."""

    def __init__(self, metrics: ServiceMetrics) -> None:
        self.m = metrics
        self.lock = threading.Lock()
        self.secagg: dict[tuple[str, int], tuple[str, datetime]] = {}
        self.hist: dict[str, tuple[str, datetime]] = {}

    # -- session events -------------------------------------------------------------------

    def before_flush(self, session: Session, context: object, instances: object) -> None:
        try:
            self._note(session)
        except Exception:  # noqa: BLE001 - a metric must never fail the request's transaction
            log.warning("round metrics: could not read this flush's changes", exc_info=True)

    def _note(self, session: Session) -> None:
        pending: Pending = session.info.setdefault(PENDING, [])
        now = utcnow()
        new, dirty = list(session.new), list(session.dirty)
        fresh = {id(o) for o in new}
        with session.no_autoflush:  # reads (the run's spec, JSON) before taking the lock
            modes = {
                id(r): _mode(session, r) for r in new + dirty if _needs_mode(r, id(r) in fresh)
            }
            hist = {
                id(row): _hist_stage(row.phase, row.state_json)
                for row in new + dirty
                if isinstance(row, HistRun)
                and (
                    id(row) in fresh or _changed(row, "state_json")[0] or _changed(row, "phase")[0]
                )
            }
        with self.lock:
            for obj in new:
                if isinstance(obj, Round):
                    self._round_opened(obj, modes[id(obj)], now, pending)
                elif isinstance(obj, Contribution) and obj.kind in DECLINE_KINDS:
                    cause = getattr(obj, "cause", None) or "unspecified"
                    pending.append(self.m.declines.labels(obj.kind, cause).inc)
            for obj in dirty:
                if isinstance(obj, Round):
                    self._round_changed(obj, modes.get(id(obj), "unknown"), now, pending)
            for obj in new + dirty:
                if id(obj) in hist:
                    assert isinstance(obj, HistRun)
                    self._hist_moved(obj.run_id, hist[id(obj)], now, pending)

    def after_commit(self, session: Session) -> None:
        for action in session.info.pop(PENDING, []):
            action()

    def after_rollback(self, session: Session) -> None:
        session.info.pop(PENDING, None)

    # -- what changed (under the lock) ----------------------------------------------------

    def _round_opened(self, rnd: Round, mode: str, now: datetime, pending: Pending) -> None:
        pending.append(self.m.rounds_opened.labels(mode, rnd.kind or "train").inc)
        if rnd.secagg_stage:
            self.secagg[(rnd.run_id, rnd.number)] = (rnd.secagg_stage, now)

    def _round_changed(self, rnd: Round, mode: str, now: datetime, pending: Pending) -> None:
        key = (rnd.run_id, rnd.number)
        moved, old_stage = _changed(rnd, "secagg_stage")
        if moved:
            started = self.secagg.pop(key, None)
            if started is not None and started[0] == old_stage:
                self._observe(pending, self.m.secagg_stage_seconds, started, now)
            if rnd.secagg_stage is not None:
                self.secagg[key] = (rnd.secagg_stage, now)
        if _closing(rnd):
            status = rnd.status
            seconds = _seconds(rnd.opened_at, rnd.closed_at or now)
            pending.append(self.m.rounds_closed.labels(mode, status).inc)
            pending.append(partial(self.m.round_seconds.labels(mode, status).observe, seconds))
            started = self.secagg.pop(key, None)
            if started is not None:  # the last stage ends with the round
                self._observe(pending, self.m.secagg_stage_seconds, started, now)

    def _hist_moved(self, run_id: str, label: str | None, now: datetime, pending: Pending) -> None:
        started = self.hist.get(run_id)
        if started is not None and started[0] == label:
            return
        if started is not None:
            self._observe(pending, self.m.hist_stage_seconds, started, now)
        if label is None:
            self.hist.pop(run_id, None)
        else:
            self.hist[run_id] = (label, now)

    @staticmethod
    def _observe(
        pending: Pending, histogram: Histogram, started: tuple[str, datetime], now: datetime
    ) -> None:
        """Time stage `started` ('stage' or 'counter:stage') until `now`, at commit."""
        stage = started[0].rpartition(":")[2]
        pending.append(partial(histogram.labels(stage).observe, _seconds(started[1], now)))


def _seconds(start: datetime, end: datetime) -> float:
    return max(0.0, (end - start).total_seconds())


def _closing(rnd: Round) -> bool:
    """Whether this flush moves the round out of ``open``."""
    changed, old = _changed(rnd, "status")
    return changed and old == "open" and rnd.status != "open"


def _needs_mode(obj: object, is_new: bool) -> bool:
    return isinstance(obj, Round) and (is_new or _closing(obj))


def _mode(s: Session, rnd: Round) -> str:
    """The round's mode name (`engines.registry.mode_of`); 'unknown' without its run."""
    run = s.get(Run, rnd.run_id)
    return mode_of(spec_of(run), rnd) if run is not None else "unknown"


def _hist_stage(phase: str | None, state_json: str | None) -> str | None:
    """'advertise', or 'counter:stage' of the open aggregation; None between rounds."""
    if phase == "advertise":
        return "advertise"
    if phase != "aggregate" or not state_json:
        return None
    current = json.loads(state_json).get("server", {}).get("current")
    if not current or current.get("stage") == "done":
        return None
    return f"{current['counter']}:{current['stage']}"
