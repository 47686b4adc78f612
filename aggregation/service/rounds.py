"""Rounds: opening, status as the coordinator sees it, and the next task for each silo."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from aggregation.service import buffer_states
from aggregation.service.exceptions import Conflict, NotFound
from aggregation.service.runs import get_model, get_run, participants, spec_of
from aggregation.service.tables import Contribution, Round, RunSilo, utcnow
from schemas.wire import Metrics, RoundOut, SiloRoundState

_STATE_OF_KIND = {
    "update": "submitted",
    "refusal": "refused",
    "evaluation": "evaluated",
    "sat_out": "sat_out",
    "declined": "declined",
}


def get_round(s: Session, run_id: str, number: int, *, for_update: bool = False) -> Round:
    """The round (NotFound naming it); `for_update` takes the row's lock and reads it afresh,
    and without it a round this session already loaded is not read again (as `runs.get_run`).
    """
    if for_update:
        stmt = select(Round).where(Round.run_id == run_id, Round.number == number)
        rnd = s.scalar(stmt.with_for_update().execution_options(populate_existing=True))
    else:
        rnd = s.get(Round, (run_id, number))
    if rnd is None:
        raise NotFound(f"round {number} of run {run_id} does not exist")
    return rnd


def open_round(s: Session, run_id: str, number: int, kind: str, deadline_s: float) -> Round:
    """Open round `number`; opening the current round again returns it (a retried request)."""
    run = get_run(s, run_id, for_update=True)
    if run.status != "running":
        raise Conflict(f"run {run_id} is {run.status}; rounds open only while it is running")
    if number == run.current_round:
        return get_round(s, run_id, number)
    if number != run.current_round + 1:
        raise Conflict(f"run {run_id} is at round {run.current_round}; cannot open round {number}")
    if run.current_round:
        previous = get_round(s, run_id, run.current_round)
        if previous.status == "open":
            raise Conflict(f"round {previous.number} of run {run_id} is still open")
    now = utcnow()
    rnd = Round(
        run_id=run_id,
        number=number,
        kind=kind,
        status="open",
        opened_at=now,
        deadline_at=now + timedelta(seconds=deadline_s),
        input_model_version=run.latest_model_version or 0,
    )
    s.add(rnd)
    run.current_round = number
    s.flush()
    return rnd


def list_rounds(s: Session, run_id: str) -> list[Round]:
    """Every round of an existing run, in order (NotFound for an unknown run)."""
    get_run(s, run_id)
    return list(s.scalars(select(Round).where(Round.run_id == run_id).order_by(Round.number)))


def contributions(s: Session, run_id: str, number: int) -> list[Contribution]:
    stmt = select(Contribution).where(Contribution.run_id == run_id, Contribution.round == number)
    return list(s.scalars(stmt.order_by(Contribution.silo)))


def active_silos(s: Session, run_id: str) -> list[str]:
    return [p.silo for p in participants(s, run_id) if p.status == "active"]


def anyone_waiting(s: Session, run_id: str, number: int) -> bool:
    """Whether a participant that has not refused the run still owes round `number` an answer,
    that is `round_out(...).complete` is False. One query: a coordinator's wait on the round is
    woken by every answer, and most wake-ups find the round incomplete."""
    answered = select(Contribution.silo).where(
        Contribution.run_id == run_id, Contribution.round == number
    )
    owing = select(RunSilo.silo).where(
        RunSilo.run_id == run_id, RunSilo.status != "refused", RunSilo.silo.not_in(answered)
    )
    return s.scalar(owing.limit(1)) is not None


def round_out(s: Session, rnd: Round) -> RoundOut:
    by_silo = {c.silo: c for c in contributions(s, rnd.run_id, rnd.number)}
    members = participants(s, rnd.run_id)
    absent = _closed_buffer_absences(s, rnd, [p.silo for p in members if p.silo not in by_silo])
    states: list[SiloRoundState] = []
    for p in members:
        c = by_silo.get(p.silo)
        if c is None:
            reason = p.reason if p.status == "refused" else absent.get(p.silo)
            state = "refused" if p.status == "refused" else "waiting"
            states.append(SiloRoundState(silo=p.silo, state=state, reason=reason))  # type: ignore[arg-type]
            continue
        states.append(
            SiloRoundState(
                silo=p.silo,
                state=_STATE_OF_KIND[c.kind],  # type: ignore[arg-type]
                reason=c.reason,
                cause=c.cause,
                n_examples=c.n_examples,
                metrics=Metrics.model_validate_json(c.metrics_json) if c.metrics_json else None,
                train_seconds=c.train_seconds,
            )
        )
    model_sha = None
    if rnd.model_version is not None:
        model_sha = get_model(s, rnd.run_id, rnd.model_version).sha256
    return RoundOut(
        run_id=rnd.run_id,
        round=rnd.number,
        kind=rnd.kind,  # type: ignore[arg-type]
        status=rnd.status,  # type: ignore[arg-type]
        opened_at=rnd.opened_at,
        deadline_at=rnd.deadline_at,
        closed_at=rnd.closed_at,
        complete=all(st.state != "waiting" for st in states),
        silos=states,
        model_version=rnd.model_version,
        model_sha256=model_sha,
        reason=rnd.reason,
        secagg_stage=rnd.secagg_stage,
        input_model_version=rnd.input_model_version,
    )


def _closed_buffer_absences(s: Session, rnd: Round, silos: list[str]) -> dict[str, str]:
    """For a closed asynchronous buffer: what became of each silo's update it does not hold
    (`buffer_states`); the wire's state stays ``waiting`` (no answer in this round), the reason
    says the buffer waits for nobody. Empty for any other round."""
    if rnd.status == "open" or rnd.kind != "train" or not silos:
        return {}
    if spec_of(get_run(s, rnd.run_id)).asynchronous is None:
        return {}
    return buffer_states.fates(s, rnd, silos)
