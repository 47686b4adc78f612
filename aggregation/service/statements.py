"""Silo-signed ledger statements about what the service accepted, and rejected submissions.

An accepted update (plain, masked or sealed trees) comes with the silo's signed
``update_accepted`` statement; the service appends it in the same transaction and answers
with its receipt. A refused submission only bumps a counter (`record_rejection`: table
``rejection_counts``, one row per run, round, silo and reason code) in a transaction of its
own, so a refusal leaves the round, and the ledger, untouched: an approved silo sending
garbage in a loop cannot grow the database. When the round closes, `summarize_rejections`
writes one ``rejections`` ledger entry with that round's counts, which keeps the audit trail.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import case, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from aggregation.service.db import transaction
from aggregation.service.exceptions import Conflict, InvalidPayload, ServiceError
from aggregation.service.federations import find_silo
from aggregation.service.ledger import LedgerEntry
from aggregation.service.lineage import Recorder
from aggregation.service.metrics import count_rejection
from aggregation.service.tables import Contribution, RejectionCount, Round, Run, RunSilo, utcnow
from schemas.lineage import LineageError
from schemas.signing import STATEMENT_HEADER, update_statement_payload
from schemas.wire import INT32_MAX

# Statements of a run that ended are taken for this long after its end: honest silos send
# some then (a validation_result no POST carried goes alone when the agent's run ends,
# `SiloClient.flush_held`; privacy_spent follows an accepted update and distilled a masked
# answer, both of which may be the run's last); later ones are refused (409).
LATE_STATEMENT_S = 3600.0
# An honest silo states each kind at most once a round (validation_result, privacy_spent,
# distilled) or once a run (personalized, ensembled); twice that, and some slack for an
# agent that restarted mid-round and stated its round again, bounds what one silo can add to
# the append-only ledger in a run, with the size bounds on each statement.
STATEMENTS_PER_ROUND = 2
STATEMENT_SLACK = 16


def admit_statement(s: Session, run_id: str, silo: str, kind: str) -> None:
    """Refuse (409) a `kind` statement from `silo` that run `run_id` does not take: the run
    has not started (a silo states nothing before its first task), ended more than
    `LATE_STATEMENT_S` ago, or already holds as many of the silo's `kind` statements as its
    rounds so far allow (`STATEMENTS_PER_ROUND` each, plus `STATEMENT_SLACK`)."""
    run = s.get(Run, run_id)
    assert run is not None, "require_participant found the run"
    if run.status == "created":
        raise Conflict(
            f"run {run_id} has not started: a {kind} statement from silo {silo!r} has no "
            f"round to belong to"
        )
    if run.status in ("finished", "failed", "cancelled"):
        ended = run.finished_at or run.created_at
        late = (utcnow() - ended).total_seconds()
        if late > LATE_STATEMENT_S:
            raise Conflict(
                f"run {run_id} is {run.status} (ended {late:.0f} s ago): a {kind} statement "
                f"from silo {silo!r} comes after the {LATE_STATEMENT_S:.0f} s in which a run "
                f"that ended still takes statements"
            )
    bound = STATEMENTS_PER_ROUND * max(run.current_round, 1) + STATEMENT_SLACK
    held = s.scalar(
        select(func.count())
        .select_from(LedgerEntry)
        .where(
            LedgerEntry.run_id == run_id,
            LedgerEntry.author == f"silo:{silo}",
            LedgerEntry.kind == kind,
        )
    )
    if (held or 0) >= bound:
        raise Conflict(
            f"silo {silo!r} already stated {held} {kind} statements in run {run_id}, as many "
            f"as its {run.current_round} rounds so far allow ({STATEMENTS_PER_ROUND} a round "
            f"+ {STATEMENT_SLACK}): this one is refused"
        )


def accept_statement(
    s: Session,
    recorder: Recorder,
    federation: str,
    silo: str,
    c: Contribution,
    created: bool,
    statement_signature: str | None,
    what: str = "update",
    base_round: int | None = None,
) -> dict[str, object]:
    """Record the silo's signed `update_accepted` statement for a stored update; the answer
    (digest, duplicate, receipt). A resubmission (created False) was acknowledged before.
    `base_round`: the round an asynchronous buffer's update was trained for, as the service
    recorded it; the silo's signature must cover the same round."""
    if not created:
        return {"digest": c.digest, "duplicate": True, "receipt": None}
    if not statement_signature:
        raise InvalidPayload(
            f"{what} from silo {silo!r} for round {c.round} lacks its signed ledger "
            f"statement ({STATEMENT_HEADER} header)"
        )
    payload = update_statement_payload(silo, c.round, c.digest or "", c.n_examples or 0, base_round)
    try:
        receipt = record_silo_statement(
            s, recorder, federation, silo, c.run_id, "update_accepted", payload, statement_signature
        )
    except InvalidPayload as exc:
        if base_round is None:
            raise
        raise InvalidPayload(
            f"{exc}; the statement must name base round {base_round}, the round this "
            f"silo announced it trained for (buffer {c.round}'s cohort)"
        ) from exc
    return {"digest": c.digest, "duplicate": False, "receipt": receipt}


def record_silo_statement(
    s: Session,
    recorder: Recorder,
    federation: str,
    silo: str,
    run_id: str,
    kind: str,
    payload: dict[str, Any],
    signature: str,
) -> dict[str, object]:
    """Append a silo-authored statement (its signature checked against the enrolled key);
    the service's receipt. InvalidPayload when the signature or the payload is wrong."""
    row = find_silo(s, federation, silo)
    assert row is not None, "callers are authenticated silos"
    try:
        _, receipt = recorder.silo(s, kind, payload, run_id, silo, signature, row.public_key)
    except LineageError as exc:
        raise InvalidPayload(f"{kind} statement from silo {silo!r}: {exc}") from exc
    return receipt.model_dump()


def record_rejection(
    factory: sessionmaker[Session], run_id: str, number: int, silo: str, exc: ServiceError
) -> None:
    """Count a refused submission in `rejection_counts`, in a transaction of its own.

    The refusal leaves everything else untouched: one upsert of the row keyed (run, round,
    silo, reason code), O(1) per request, never a row beyond that key space. The round is the
    one named when it exists, else the run's current round (a request naming a round that
    does not exist cannot mint keys). Unknown runs and silos outside the run are not counted.
    """
    for attempt in range(2):
        try:
            with transaction(factory) as s:
                _count(s, run_id, number, silo, exc.code.value)
            count_rejection(factory, exc.code.value)  # Prometheus (aggregation/service/metrics)
            return
        except IntegrityError:  # a concurrent first rejection inserted the row: bump it
            if attempt:
                raise


def _count(s: Session, run_id: str, number: int, silo: str, code: str) -> None:
    run = s.get(Run, run_id)
    if run is None or s.get(RunSilo, (run_id, silo)) is None:
        return
    if s.get(Round, (run_id, number)) is None:
        number = run.current_round
    now = utcnow()
    key = (
        (RejectionCount.run_id == run_id)
        & (RejectionCount.round == number)
        & (RejectionCount.silo == silo)
        & (RejectionCount.reason_code == code)
    )
    saturating = case((RejectionCount.count < INT32_MAX, RejectionCount.count + 1), else_=INT32_MAX)
    bumped = s.execute(update(RejectionCount).where(key).values(count=saturating, last_at=now))
    if getattr(bumped, "rowcount", 0) == 0:
        s.add(
            RejectionCount(
                run_id=run_id,
                round=number,
                silo=silo,
                reason_code=code,
                federation=run.federation,
                count=1,
                first_at=now,
                last_at=now,
            )
        )
        s.flush()


def summarize_rejections(s: Session, recorder: Recorder, rnd: Round) -> None:
    """One ``rejections`` ledger entry for a round that has just closed: per silo and reason
    code, how many submissions were refused and when (first, last). Nothing when none were."""
    if rnd.status == "open":
        return
    rows = s.scalars(
        select(RejectionCount)
        .where(RejectionCount.run_id == rnd.run_id, RejectionCount.round == rnd.number)
        .order_by(RejectionCount.silo, RejectionCount.reason_code)
    ).all()
    if not rows:
        return
    counts = [
        {
            "silo": r.silo,
            "reason": r.reason_code,
            "count": r.count,
            "first_at": r.first_at.isoformat() + "Z",
            "last_at": r.last_at.isoformat() + "Z",
        }
        for r in rows
    ]
    total = sum(r.count for r in rows)
    recorder.service(
        s, "rejections", {"round": rnd.number, "total": total, "counts": counts}, rnd.run_id
    )
