"""The next piece of work for a silo, derived from the database on every poll: the engine of
each open round it takes part in says what (`RoundEngine.task_for`); else a vertical run that
names the silo as a party and that it has not joined yet."""

from __future__ import annotations

import base64

from sqlalchemy import and_, select
from sqlalchemy.orm import Session

from aggregation.service.abandoned import end_if_abandoned
from aggregation.service.engines import secure
from aggregation.service.engines.base import Hub, RoundContext
from aggregation.service.engines.context import round_context
from aggregation.service.engines.registry import engine_for
from aggregation.service.exceptions import ServiceError
from aggregation.service.rounds import get_round
from aggregation.service.runs import spec_of
from aggregation.service.tables import ModelVersion, Round, Run, RunSilo
from aggregation.service.vertical_relay import out, pending_for
from schemas.frames import FrameError, pack_frames
from schemas.tasks import (
    INLINE_INBOX,
    INLINE_INBOX_MAX_BYTES,
    INLINE_MODEL_MAX_BYTES,
    INLINE_MODEL_TASKS,
    RunEndedTask,
    Task,
    VerticalTask,
)


def next_task(s: Session, federation: str, silo: str, run_id: str | None, hub: Hub) -> Task | None:
    """The work waiting for `silo`, or None. With `run_id`, also tells when that run ended."""
    for run, membership, current in _memberships(s, federation, silo, run_id):
        # a run its coordinator abandoned ends here (abandoned.py), from the rows just read
        if end_if_abandoned(s, hub, run, current) and run_id is None:
            continue  # an agent between runs was not in it: the other runs' work
        if run.status in ("finished", "failed", "cancelled") or membership.status != "active":
            return RunEndedTask(run_id=run.id, run_status=run.status)
        if run.status != "running" or run.current_round == 0:
            continue
        rnd = current or get_round(s, run.id, run.current_round)  # None: NotFound names it
        if rnd.status != "open":
            continue
        spec = spec_of(run)
        task = engine_for(spec, rnd).task_for(RoundContext(s, run, rnd, spec, hub), silo)
        if task is not None:
            return task
    if run_id is None:  # a vertical run waiting for this party (after every round's work)
        vertical = pending_for(s, federation, silo)
        if vertical is not None:
            return VerticalTask(run_id=vertical.id, vertical=out(vertical))
    return None


def _memberships(
    s: Session, federation: str, silo: str, run_id: str | None
) -> list[tuple[Run, RunSilo, Round | None]]:
    """The runs to look at, each with the silo's membership and the run's current round, in
    one query (a poll is mostly this read, and an agent polls after every answer): run
    `run_id`, else every running run the silo is active in, oldest first."""
    current = and_(Round.run_id == Run.id, Round.number == Run.current_round)
    stmt = (
        select(Run, RunSilo, Round)
        .join(RunSilo, and_(RunSilo.run_id == Run.id, RunSilo.silo == silo))
        .outerjoin(Round, current)
        .where(Run.federation == federation)
    )
    if run_id is not None:
        stmt = stmt.where(Run.id == run_id)
    else:
        stmt = stmt.where(Run.status == "running", RunSilo.status == "active")
    return [(run, m, rnd) for run, m, rnd in s.execute(stmt.order_by(Run.created_at)).all()]


def with_model(s: Session, task: Task) -> Task:
    """`task` carrying its model version inline (`schemas.tasks.INLINE_MODEL_TASKS`), when it
    needs one and that version is at most INLINE_MODEL_MAX_BYTES; else `task` as it was. The
    silo asked, and takes part in the task's run: what `GET .../models/{version}` checks."""
    if task.type not in INLINE_MODEL_TASKS:
        return task
    model = s.get(ModelVersion, (task.run_id, task.model_version))
    if model is None or len(model.payload) > INLINE_MODEL_MAX_BYTES:
        return task
    return task.model_copy(update={"model_b64": base64.b64encode(model.payload).decode()})


def with_inbox(s: Session, hub: Hub, task: Task, silo: str) -> Task:
    """`task` carrying what its stage fetches first (`schemas.tasks.INLINE_INBOX`), when it
    is ready and at most INLINE_INBOX_MAX_BYTES; else `task` as it was, and the silo's GET
    gets the answer (or the refusal) it would have got."""
    what = INLINE_INBOX.get(task.type)
    if what is None:
        return task
    try:
        ctx = round_context(s, hub, task.run_id, task.round)
        frames = pack_frames(secure.inbox(ctx, silo, what))
    except (ServiceError, FrameError):
        return task
    if len(frames) > INLINE_INBOX_MAX_BYTES:
        return task
    return task.model_copy(update={"inbox_b64": base64.b64encode(frames).decode()})
