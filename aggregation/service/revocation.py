"""Revoking a silo: its status, the signed ledger's record of it, and the runs it leaves.

`revoke` does all of it in the caller's transaction, so a revocation is either complete or
not there at all:

- the silo's status becomes ``revoked`` (every later request of it is refused, `auth`);
- the ledger gets a service-signed ``silo_revoked`` entry for the federation (run_id None;
  payload silo, federation, public_key, reason, runs: the runs in progress it left) and one
  per such run (run_id that run; payload silo, federation, public_key, reason, round: the
  run's current round), as approval writes ``silo_joined``;
- it leaves every run in progress (created or running) it is still active in, as a silo that
  declines the whole run does (`declines`, scope ``run``): its membership becomes
  ``refused``, the open round gets a ``refusal`` answer from it unless it already answered,
  and the round moves on (`closing.unblock`): a plain round is complete once the others
  answered, a secure round treats it as a dropout after key sharing (or as never having
  joined before it), an asynchronous buffer stops counting on it. A secure round whose
  current stage (consistency, unmask) awaits nobody but the revoked silo, which sent its
  masked update before, moves on at once, as its deadline would have moved it.

Revoking a revoked silo changes nothing and writes nothing. Locks: the silo's row, then
every affected run and its open round (run before round, as every writer takes them; runs
in id order), all before the first ledger entry, whose lock every writer takes last.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from pydantic import Field
from sqlalchemy import select
from sqlalchemy.orm import Session

from aggregation.service import federations as crud
from aggregation.service.closing import unblock
from aggregation.service.contributions import stored_once
from aggregation.service.engines.base import Hub, RoundContext
from aggregation.service.engines.registry import engine_for
from aggregation.service.rounds import get_round
from aggregation.service.runs import get_run, spec_of
from aggregation.service.statements import summarize_rejections
from aggregation.service.tables import Contribution, Round, Run, RunSilo, Silo
from schemas.wire import MAX_TEXT, TEXT_PATTERN, Message

log = logging.getLogger("fedsilo.service.revocation")

KIND = "silo_revoked"
IN_PROGRESS = ("created", "running")
# the secure stages that wait for every survivor of the masked stage, whatever its membership
_SURVIVOR_STAGES = ("consistency", "unmask")


class RevokeRequest(Message):
    """The optional body of ``POST /v1/federations/{f}/silos/{s}/revoke``."""

    reason: str | None = Field(
        default=None,
        min_length=1,
        max_length=MAX_TEXT,
        pattern=TEXT_PATTERN,
        description="why the silo is revoked (kept in the signed ledger)",
    )


@dataclass
class _Left:
    """A run the silo leaves: the run and its open round (locked), its membership."""

    run: Run
    membership: RunSilo
    rnd: Round | None


def revoke(s: Session, hub: Hub, federation: str, name: str, reason: str | None) -> Silo:
    """Revoke silo `name` of `federation` (see the module docstring); the silo's row.

    NotFound for an unknown federation or silo; a second revocation returns the row as it is.
    """
    row = _locked_silo(s, federation, name)
    if row is None:  # the NotFound it always was
        return crud.set_silo_status(s, federation, name, "revoked")
    if row.status == "revoked":  # revoked before: nothing changes, nothing is written
        return row
    locked = [_leave(s, run_id, name) for run_id in _runs_in_progress(s, federation, name)]
    left = [x for x in locked if x is not None]
    crud.set_silo_status(s, federation, name, "revoked")
    base = {"silo": name, "federation": federation, "public_key": row.public_key, "reason": reason}
    hub.recorder.service(s, KIND, {**base, "runs": [x.run.id for x in left]}, None)
    for x in left:
        number = x.run.current_round
        hub.recorder.service(s, KIND, {**base, "round": number}, x.run.id)
        _take_out(s, x, federation, number, reason)
        _move_on(s, hub, x, name)
    return row


def _locked_silo(s: Session, federation: str, name: str) -> Silo | None:
    """The silo's row, locked and read afresh (two revocations at once: one writes)."""
    crud.get_federation(s, federation)  # a misspelt federation is not "no such silo"
    stmt = select(Silo).where(Silo.federation == federation, Silo.name == name)
    return s.scalar(stmt.with_for_update().execution_options(populate_existing=True))


def _runs_in_progress(s: Session, federation: str, name: str) -> list[str]:
    """Ids of the federation's created or running runs `name` is still active in."""
    stmt = (
        select(Run.id)
        .join(RunSilo, RunSilo.run_id == Run.id)
        .where(Run.federation == federation, Run.status.in_(IN_PROGRESS))
        .where(RunSilo.silo == name, RunSilo.status == "active")
        .order_by(Run.id)
    )
    return list(s.scalars(stmt))


def _leave(s: Session, run_id: str, name: str) -> _Left | None:
    """Lock the run, then its current round; None when, locked, the run ended or the silo
    is no longer active in it (it left meanwhile)."""
    run = get_run(s, run_id, for_update=True)
    if run.status not in IN_PROGRESS:
        return None
    stmt = select(RunSilo).where(RunSilo.run_id == run_id, RunSilo.silo == name)
    membership = s.scalar(stmt.execution_options(populate_existing=True))
    if membership is None or membership.status != "active":
        return None
    rnd = get_round(s, run_id, run.current_round, for_update=True) if run.current_round else None
    return _Left(run, membership, rnd)


def _take_out(s: Session, x: _Left, federation: str, number: int, reason: str | None) -> None:
    """The membership becomes refused; an open round the silo has not answered gets its
    ``refusal`` (an answer stored before stands: it was sent while the silo was approved)."""
    why = f"revoked from federation {federation} in round {number}"
    why += f": {reason}" if reason else " (no reason given)"
    x.membership.status = "refused"
    x.membership.reason = why
    rnd = x.rnd
    if rnd is not None and rnd.status == "open":
        key = (rnd.run_id, rnd.number, x.membership.silo)
        if s.get(Contribution, key) is None:
            silo = x.membership.silo
            row = Contribution(
                run_id=rnd.run_id, round=rnd.number, silo=silo, kind="refusal", reason=why
            )
            stored_once(s, row)
    s.flush()


def _move_on(s: Session, hub: Hub, x: _Left, name: str) -> None:
    """Let the open round go on without the silo (as a run decline does), closing it when
    that was all it waited for. An error of the round's engine here leaves the round to its
    deadline (logged), never the revocation undone."""
    rnd = x.rnd
    if rnd is None or rnd.status != "open":
        return
    try:
        with s.begin_nested():
            unblock(s, x.run.id, hub)
            if rnd.status == "open" and rnd.secagg_stage in _SURVIVOR_STAGES:
                ctx = RoundContext(s, x.run, rnd, spec_of(x.run), hub)
                engine = engine_for(ctx.spec, rnd)
                awaited = engine.awaited(ctx)
                if awaited and awaited <= {name}:  # only the revoked survivor: its deadline's move
                    engine.advance(ctx, force=True)
            if rnd.status != "open":  # as every close does: rejections, then a checkpoint
                summarize_rejections(s, hub.recorder, rnd)
                hub.recorder.checkpoint_round(s, rnd)
    except Exception:
        log.exception(
            "revoking silo %s: round %s of run %s could not move on now; it closes at its deadline",
            name,
            rnd.number,
            x.run.id,
        )
