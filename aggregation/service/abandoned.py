"""Runs their coordinator abandoned: the service fails them, so that their silos leave.

The coordinator flow (flows/coordinator.py) closes each round at its deadline and opens the
next; the service itself never closes a round nor ends a run. A coordinator that died (killed,
its machine gone) would leave its run ``running`` for good, and since each silo agent serves one
run at a time (a Prefect flow run polling the tasks of that run), its agents would stay in it
and never take the federation's next run, though their presence says they are ready.

So a running run whose current round is still open `grace_s` after its deadline (or closed
that long ago with no round opened and the run not ended since) is failed here, with the
ledger's ``round_failed`` (an open round) and ``run_failed`` entries a failed run gets; every
silo's next task for it is then `RunEndedTask`. The grace is max(``abandoned_after_s``, the
run's round deadline): a live coordinator closes at the deadline, so the grace covers only a
slow one (settings.py says what it must cover).

A run before its first round has no deadline: its coordinator is waiting for its silos to
report ready, reading the run every few seconds (`flows.round_progress.wait_ready`), and
each read is recorded (`coordinator_read`, at most every `SEEN_EVERY_S`). Such a run whose
coordinator has not read it for ``abandoned_after_s`` is failed the same way.

It is checked lazily, where it is cheap and certain to happen, not by a thread of its own:
- at a silo's poll (`tasks.next_task`), from the rows the poll reads anyway (the long-poll
  re-checks every ``poll_interval_s``, so a waiting agent leaves within that of the grace);
- before a run is created in the federation (`routes.runs.create_run`): the next `train`
  is not starved by an abandoned one;
- when the coordinator reads runs (`GET /v1/runs/{id}`, `GET /v1/runs`): a coordinator that
  comes back (a Prefect retry, `fedsilo train --resume`) finds its run failed and says why.

A live coordinator's contact moves the deadline it will close at (`coordinator_contact`): a
repeated opening of the open round (a resumed coordinator rejoins it and waits a whole
deadline again) and a close that leaves a secure round open at its next stage (it waits a
whole deadline again), exactly as flows/coordinator.py `run_round` counts its deadline.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

from sqlalchemy import and_, or_, select
from sqlalchemy.orm import Session

from aggregation.service import collective_rounds
from aggregation.service.engines.base import Hub, RoundContext
from aggregation.service.engines.common import fail_round
from aggregation.service.rounds import get_round
from aggregation.service.runs import finish_run, get_run, record_run_end, spec_of
from aggregation.service.settings import ServiceSettings
from aggregation.service.tables import Round, Run, utcnow

log = logging.getLogger("fedsilo.service")


def grace_s(settings: ServiceSettings, run: Run) -> float:
    """How long past its deadline the run's open round may stay open (0: never abandoned)."""
    if settings.abandoned_after_s <= 0:
        return 0.0
    return max(settings.abandoned_after_s, spec_of(run).round_deadline_s)


def _since(rnd: Round) -> datetime:
    """From when the coordinator owes the round a step: its deadline while it is open (the
    coordinator closes it then), its close once closed (the coordinator opens the next round
    or ends the run at once)."""
    if rnd.status == "open" or rnd.closed_at is None:
        return rnd.deadline_at
    return rnd.closed_at


SEEN_EVERY_S = 10.0  # a coordinator's reads before round 1 are recorded at most this often


def coordinator_read(settings: ServiceSettings, run: Run) -> None:
    """The coordinator read `run` (`GET /v1/runs/{id}`): before round 1, the run is not
    abandoned while it keeps reading (see the module docstring). Recorded at most every
    `SEEN_EVERY_S`, and a quarter of the grace when that is shorter."""
    if run.status != "running" or run.current_round:
        return
    now = utcnow()
    seen = run.coordinator_seen_at
    every = min(SEEN_EVERY_S, settings.abandoned_after_s / 4)
    if seen is None or now - seen > timedelta(seconds=every):
        run.coordinator_seen_at = now


def _unread(settings: ServiceSettings, run: Run, now: datetime) -> bool:
    """Whether `run`, before round 1, has gone unread by its coordinator past the grace (a run
    started before the service recorded reads is never judged so)."""
    seen = run.coordinator_seen_at
    return seen is not None and now > seen + timedelta(seconds=settings.abandoned_after_s)


def _overdue(settings: ServiceSettings, run: Run, rnd: Round | None, now: datetime) -> bool:
    """Whether `run`, with its current round `rnd`, is past its grace. Cheap on rows already
    loaded: the spec is parsed only once the shortest grace has passed."""
    if settings.abandoned_after_s <= 0 or run.status != "running":
        return False
    if not run.current_round:  # waiting for ready silos: judged by its coordinator's reads
        return _unread(settings, run, now)
    if rnd is None or rnd.number != run.current_round:
        return False
    since = _since(rnd)
    if now <= since + timedelta(seconds=settings.abandoned_after_s):
        return False
    return now > since + timedelta(seconds=grace_s(settings, run))


def end_if_abandoned(s: Session, hub: Hub, run: Run, rnd: Round | None) -> bool:
    """Fail `run` when its coordinator abandoned it (its current round `rnd` is past the
    grace); True when this ended it. The rows are checked as loaded first (a poll's), then
    again locked, so that a close or an opening that committed meanwhile wins."""
    now = utcnow()
    if not _overdue(hub.settings, run, rnd, now):
        return False
    return _fail(s, hub, run.id, now)


def end_abandoned(
    s: Session, hub: Hub, *, federation: str | None = None, run_id: str | None = None
) -> list[str]:
    """Fail every abandoned run (of `federation`, or run `run_id`, when given); their ids.
    One query, of running runs whose current round passed the shortest grace."""
    settings = hub.settings
    if settings.abandoned_after_s <= 0:
        return []
    now = utcnow()
    cutoff = now - timedelta(seconds=settings.abandoned_after_s)
    current = and_(Round.run_id == Run.id, Round.number == Run.current_round)
    late = or_(
        and_(Round.status == "open", Round.deadline_at < cutoff),
        and_(Round.status != "open", Round.closed_at < cutoff),
    )
    stmt = select(Run, Round).join(Round, current).where(Run.status == "running", late)
    waiting = select(Run).where(  # before round 1: no round to join
        Run.status == "running", Run.current_round == 0, Run.coordinator_seen_at < cutoff
    )
    if federation is not None:
        stmt = stmt.where(Run.federation == federation)
        waiting = waiting.where(Run.federation == federation)
    if run_id is not None:
        stmt = stmt.where(Run.id == run_id)
        waiting = waiting.where(Run.id == run_id)
    found: list[tuple[Run, Round | None]] = list(s.execute(stmt).tuples().all())
    found += [(run, None) for run in s.scalars(waiting).all()]
    ended = []
    for run, rnd in sorted(found, key=lambda pair: pair[0].created_at):
        if _overdue(settings, run, rnd, now) and _fail(s, hub, run.id, now):
            ended.append(run.id)
    return ended


def _fail(s: Session, hub: Hub, run_id: str, now: datetime) -> bool:
    """Fail the run if, locked (run, then round: the order a close takes them in), it is still
    abandoned; its open round fails with it. The ledger gets ``round_failed`` (an open round)
    and ``run_failed``, whose checkpoint anchors both."""
    run = get_run(s, run_id, for_update=True)
    if run.status != "running":
        return False
    if not run.current_round:
        if not _unread(hub.settings, run, now):
            return False
        assert run.coordinator_seen_at is not None  # _unread checked it
        reason = (
            f"abandoned: its coordinator stopped reading the run while waiting for its silos "
            f"to be ready (last read {run.coordinator_seen_at.isoformat(timespec='seconds')}Z, "
            f"grace {hub.settings.abandoned_after_s:.0f} s) and opened no round; "
            "a coordinator that comes back finds it failed"
        )
        return _end(s, hub, run_id, reason)
    rnd = get_round(s, run_id, run.current_round, for_update=True)
    if not _overdue(hub.settings, run, rnd, now):
        return False
    grace = grace_s(hub.settings, run)
    number, since = rnd.number, _since(rnd)
    comes_back = "a coordinator that comes back finds it failed"
    if rnd.status == "open":
        reason = (
            f"abandoned: its coordinator did not close round {number} by its deadline "
            f"({since.isoformat(timespec='seconds')}Z) + grace {grace:.0f} s; {comes_back}"
        )
        fail_round(RoundContext(s, run, rnd, spec_of(run), hub), reason)
        _stop_collective_after_commit(s, run_id, number)
    else:
        reason = (
            f"abandoned: its coordinator neither opened round {number + 1} nor ended the run "
            f"within grace {grace:.0f} s of round {number}'s close "
            f"({since.isoformat(timespec='seconds')}Z); {comes_back}"
        )
    return _end(s, hub, run_id, reason)


def _end(s: Session, hub: Hub, run_id: str, reason: str) -> bool:
    """Fail the run with its ``run_failed`` entry; True."""
    run, _ = finish_run(s, run_id, "failed", reason)
    record_run_end(s, hub.recorder, run, "failed", reason)
    log.warning("run %s: %s", run_id, reason)
    return True


def _stop_collective_after_commit(s: Session, run_id: str, number: int) -> None:
    """A collective tree round's gRPC server in this process stops once the failure commits
    (as a cancel's does)."""
    from sqlalchemy import event

    def stop(_session: Session) -> None:
        collective_rounds.stop(run_id, number)

    event.listen(s, "after_commit", stop, once=True)


def coordinator_contact(rnd: Round, deadline_s: float) -> None:
    """The coordinator, alive, waits `deadline_s` more for the open round `rnd` (it rejoined
    it, or forced a secure round on to its next stage): the deadline it will close at, from
    which the grace counts, moves with it (never earlier)."""
    if rnd.status != "open":
        return
    rnd.deadline_at = max(rnd.deadline_at, utcnow() + timedelta(seconds=deadline_s))
