"""Closing a round, and moving one on when a silo leaves it: both dispatch to the round's
engine (`engines.registry`). Each runs in one transaction with the round row locked, so a
crash at any point leaves either the old state or the new one, and a retried close returns
the stored result. Ledger entries (aggregate, model_saved, metrics) commit with it."""

from __future__ import annotations

from sqlalchemy.orm import Session

from aggregation.service.abandoned import coordinator_contact
from aggregation.service.engines.base import Hub, RoundContext
from aggregation.service.engines.registry import engine_for
from aggregation.service.exceptions import Conflict
from aggregation.service.rounds import get_round
from aggregation.service.runs import get_run, spec_of
from aggregation.service.statements import summarize_rejections
from aggregation.service.tables import Round, Run, utcnow
from aggregation.service.wakeup import silos_unaffected


def close_round(s: Session, run_id: str, number: int, hub: Hub) -> Round:
    """Aggregate (train round) or close (evaluation round) at the deadline. Idempotent."""
    # run, then round: the order every answer path takes them in, else a deadline close
    # racing a late answer deadlocks (PostgreSQL)
    run = get_run(s, run_id, for_update=True)
    rnd = get_round(s, run_id, number, for_update=True)
    if rnd.status != "open":
        return rnd
    spec = spec_of(run)
    engine_for(spec, rnd).close(RoundContext(s, run, rnd, spec, hub))
    summarize_rejections(s, hub.recorder, rnd)
    hub.recorder.checkpoint_round(s, rnd)
    # still open (a secure round forced on to its next stage): its coordinator, alive, waits
    # a whole deadline again, and the grace before the run counts as abandoned moves with it
    coordinator_contact(rnd, spec.round_deadline_s)
    if run.status == "running" and run.current_round == number and rnd.status != "open":
        silos_unaffected(s)  # their polls wake when the coordinator opens the next round
    return rnd


def cancel_run(s: Session, run_id: str, reason: str, hub: Hub) -> tuple[Run, int | None, bool]:
    """Cancel a created or running run: its open round closes as ``cancelled``, the ledger
    gets ``run_cancelled``, and every silo's next task for it is `RunEndedTask`.

    Returns (run, the round it cancelled or None, changed now); cancelling a cancelled run
    changes nothing, a finished or failed one is a Conflict naming its status.
    """
    run = get_run(s, run_id, for_update=True)
    if run.status == "cancelled":
        return run, None, False
    if run.status not in ("created", "running"):
        raise Conflict(
            f"run {run_id} is {run.status}; only a created or running run can be cancelled"
        )
    cancelled = None
    if run.current_round:
        rnd = get_round(s, run_id, run.current_round, for_update=True)
        if rnd.status == "open":
            rnd.status = "cancelled"
            rnd.reason = f"run cancelled: {reason}"
            rnd.closed_at = utcnow()
            cancelled = rnd.number
    run.status = "cancelled"
    run.reason = reason
    run.finished_at = utcnow()
    hub.recorder.service(s, "run_cancelled", {"reason": reason, "round": cancelled}, run_id)
    return run, cancelled, True


def unblock(s: Session, run_id: str, hub: Hub) -> None:
    """A silo refused the run, sat the round out or declined: it is no longer awaited, so
    the current round may move on (a secure stage may now be complete)."""
    run = s.get(Run, run_id)
    if run is None or not run.current_round:
        return
    rnd = get_round(s, run_id, run.current_round, for_update=True)
    if rnd.status == "open":
        spec = spec_of(run)
        engine_for(spec, rnd).advance(RoundContext(s, run, rnd, spec, hub), force=False)
