"""The `RoundContext` of a request: run, round and spec read (and locked) in one place."""

from __future__ import annotations

from sqlalchemy.orm import Session

from aggregation.service.engines.base import Hub, RoundContext
from aggregation.service.exceptions import Conflict
from aggregation.service.rounds import get_round
from aggregation.service.runs import get_run, spec_of


def round_context(
    s: Session,
    hub: Hub,
    run_id: str,
    number: int,
    *,
    lock_run: bool = False,
    lock_round: bool = False,
) -> RoundContext:
    """Round `number` of run `run_id` (NotFound naming what is missing); `lock_*` take the
    rows' locks, the run's first (the order every writer takes them in)."""
    run = get_run(s, run_id, for_update=lock_run)
    rnd = get_round(s, run_id, number, for_update=lock_round)
    return RoundContext(s, run, rnd, spec_of(run), hub)


def require_running(ctx: RoundContext, silo: str) -> None:
    """Refuse (Conflict) an answer to a run that is not running (cancelled, finished...)."""
    if ctx.run.status != "running":
        raise Conflict(
            f"run {ctx.run.id} is {ctx.run.status}; it takes no answers from silo {silo!r}"
        )
