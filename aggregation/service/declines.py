"""A silo's signed decline: it cannot answer a round (or the rest of a run), and says why.

The silo signs a ``decline`` statement (`schemas.wire.DeclinePayload`); the service checks
it, appends it to the ledger and applies it in the same transaction: scope ``round`` stores a
``declined`` contribution (the silo sits that round out), scope ``run`` marks the silo refused
(and its open round answered with a ``refusal``). Every engine counts either as answered, so
the caller's `closing.unblock` moves the round on at once instead of at its deadline.
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import ValidationError
from sqlalchemy import select
from sqlalchemy.orm import Session

from aggregation.service import ledger
from aggregation.service.engines.base import Hub
from aggregation.service.exceptions import AlreadyAnswered, Conflict, InvalidPayload
from aggregation.service.rounds import get_round
from aggregation.service.runs import check_participant, get_run
from aggregation.service.statements import record_silo_statement
from aggregation.service.tables import Contribution, Round
from schemas.wire import DeclinePayload

KIND = "decline"


def parse(payload: dict[str, Any], silo: str, run_id: str) -> DeclinePayload:
    """The decline in `payload`, checked against the caller (`silo`) and the URL's run."""
    try:
        decline = DeclinePayload.model_validate(payload)
    except ValidationError as exc:
        raise InvalidPayload(f"decline statement from silo {silo!r} is malformed: {exc}") from exc
    if decline.silo != silo:
        raise InvalidPayload(
            f"decline statement from silo {silo!r} names silo {decline.silo!r}; a silo "
            "declines only for itself"
        )
    if decline.run_id != run_id:
        raise InvalidPayload(
            f"decline statement from silo {silo!r} sent to run {run_id} names run "
            f"{decline.run_id!r}"
        )
    return decline


def record_decline(
    s: Session,
    hub: Hub,
    federation: str,
    silo: str,
    run_id: str,
    payload: dict[str, Any],
    signature: str,
) -> tuple[dict[str, object], bool]:
    """Check, record and apply a decline; (the ledger receipt, created now).

    A repeated identical decline returns the first one's receipt (created False) and changes
    nothing. Conflict when the run is not running or the round is not open; AlreadyAnswered
    when the silo already answered (or declined) the round.
    """
    decline = parse(payload, silo, run_id)
    run = get_run(s, run_id, for_update=True)  # the run's lock first, as every writer
    previous = _previous(s, run_id, silo, decline)
    if previous is not None:
        return ledger.receipt(previous, hub.recorder.service_key).model_dump(), False
    if run.status != "running":
        raise Conflict(f"run {run_id} is {run.status}; silo {silo!r} has nothing to decline")
    membership = check_participant(s, run_id, silo)
    if membership.status != "active":
        raise Conflict(f"silo {silo!r} already left run {run_id}: {membership.reason}")
    rnd = _open_round(s, run_id, run.current_round, decline.round, silo)
    existing = s.get(Contribution, (run_id, rnd.number, silo))
    if existing is not None:
        raise AlreadyAnswered(
            f"silo {silo!r} already answered round {rnd.number} of run {run_id} "
            f"({existing.kind}); it can no longer decline it"
        )
    receipt = record_silo_statement(
        s, hub.recorder, federation, silo, run_id, KIND, decline.model_dump(), signature
    )
    _apply(s, rnd, silo, decline)
    return receipt, True


def _previous(s: Session, run_id: str, silo: str, decline: DeclinePayload) -> Any:
    """The ledger row of an identical decline this silo already sent in this run, if any."""
    rows = s.scalars(
        select(ledger.LedgerEntry).where(
            ledger.LedgerEntry.run_id == run_id,
            ledger.LedgerEntry.kind == KIND,
            ledger.LedgerEntry.author == f"silo:{silo}",
        )
    )
    wanted = decline.model_dump()
    return next((row for row in rows if json.loads(row.payload) == wanted), None)


def _open_round(s: Session, run_id: str, current: int, number: int, silo: str) -> Round:
    """The round a decline names: it must be the run's current, open round."""
    if number != current:
        raise Conflict(
            f"silo {silo!r} declines round {number} of run {run_id}, but the run is at round "
            f"{current}; only the open round can be declined"
        )
    rnd = get_round(s, run_id, number, for_update=True)
    if rnd.status != "open":
        raise Conflict(
            f"silo {silo!r} declines round {number} of run {run_id}, which is {rnd.status}"
        )
    return rnd


def _apply(s: Session, rnd: Round, silo: str, decline: DeclinePayload) -> None:
    """Scope round: a ``declined`` answer; scope run: the silo leaves the run."""
    reason = f"{decline.cause}: {decline.reason}"
    if decline.scope == "run":
        membership = check_participant(s, rnd.run_id, silo)
        membership.status = "refused"
        membership.reason = f"declined the run in round {rnd.number}: {reason}"
    s.add(
        Contribution(
            run_id=rnd.run_id,
            round=rnd.number,
            silo=silo,
            kind="declined" if decline.scope == "round" else "refusal",
            reason=decline.reason,
            cause=decline.cause,
        )
    )
    s.flush()
