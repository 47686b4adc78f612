"""What silos send in a round: updates, refusals, evaluations.

Each is checked completely before anything is written, so a rejected request leaves round
state exactly as it was. A resubmission with the same digest (a retry after a lost response
or a service restart) is accepted once and counted once, also when the two requests arrive
at once: `stored_once` inserts a round's answer unless one is there by now.
"""

from __future__ import annotations

import json

from pydantic import ValidationError
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from aggregation.service.exceptions import AlreadyAnswered, Conflict, Forbidden, InvalidPayload
from aggregation.service.ledger import LedgerEntry
from aggregation.service.rounds import get_round
from aggregation.service.runs import get_run, spec_of
from aggregation.service.tables import Contribution, Round, RunSilo
from aggregation.service.wakeup import answers_only
from schemas import tensors
from schemas.exceptions import TensorFormatError
from schemas.specs import update_shapes
from schemas.wire import INT32_MAX, Metrics, MetricsReport

MAX_FLOW_RUN_ID = 64  # Contribution.prefect_flow_run_id is String(64)


def open_round_for(s: Session, run_id: str, number: int, silo: str, kind: str) -> Round:
    run = get_run(s, run_id)
    if run.status != "running":
        raise Conflict(f"run {run_id} is {run.status}; it accepts no contributions")
    membership = s.get(RunSilo, (run_id, silo))
    if membership is None:
        raise Forbidden(f"silo {silo!r} is not a participant of run {run_id}")
    if membership.status != "active":
        raise Conflict(f"silo {silo!r} refused run {run_id}: {membership.reason}")
    rnd = get_round(s, run_id, number)
    if rnd.kind != kind:
        raise Conflict(f"round {number} of run {run_id} is a {rnd.kind} round, not {kind}")
    if rnd.status != "open":
        raise Conflict(
            f"round {number} of run {run_id} is {rnd.status}; it no longer accepts input"
        )
    return rnd


def submit_update(
    s: Session, run_id: str, number: int, silo: str, payload: bytes
) -> tuple[Contribution, bool]:
    """Store a silo's update; returns (contribution, created). Raises on any mismatch."""
    digest = tensors.digest(payload)
    existing = s.get(Contribution, (run_id, number, silo))
    if existing is not None:
        return _update_again(existing, digest), False
    open_round_for(s, run_id, number, silo, "train")
    spec = spec_of(get_run(s, run_id))
    if spec.trees is not None:
        raise Conflict(
            f"run {run_id} trains {spec.trees.kind} trees: silo {silo!r} must send its trees "
            "sealed to /trees, not a tensor update"
        )
    shapes = update_shapes(spec)
    c = checked_update(s, run_id, silo, payload, digest, shapes, asked=number, filed=number)
    existing = stored_once(s, c)
    if existing is not None:  # a concurrent request of the silo's stored its answer first
        return _update_again(existing, digest), False
    answers_only(s, "contributions")  # a synchronous round: no other silo's task waits on it
    return c, True


def _update_again(existing: Contribution, digest: str) -> Contribution:
    """A stored answer, when the silo sends an update with `digest` again: the same update
    is a duplicate (returned), anything else is refused."""
    if existing.digest == digest:
        return existing
    raise AlreadyAnswered(
        f"silo {existing.silo!r} already answered round {existing.round} of run "
        f"{existing.run_id} ({existing.kind}, digest {existing.digest}); a second, different "
        "update is refused"
    )


def stored_once(s: Session, row: Contribution) -> Contribution | None:
    """Insert `row` unless its (run, round, silo) has an answer by now: None when inserted,
    else the stored answer, which the caller treats as if it had found it first.

    Updates do not lock their round (routes/dispatch.py), so two requests of one silo (a
    retry while the first is still running) can both find no answer and both insert; the
    second INSERT used to fail its request (500). On SQLite the check below takes the
    database's write lock first (a FOR UPDATE select opens the transaction with ``BEGIN
    IMMEDIATE``, `db._sqlite_for_update`), so looking and inserting are one step. On
    PostgreSQL the INSERT runs in a savepoint: the loser waits for the winner's commit,
    fails on the primary key, rolls back to the savepoint and reads the winner's row.
    """
    stmt = select(Contribution).where(
        Contribution.run_id == row.run_id,
        Contribution.round == row.round,
        Contribution.silo == row.silo,
    )
    stmt = stmt.execution_options(populate_existing=True)
    if s.get_bind().dialect.name == "sqlite":
        existing = s.scalar(stmt.with_for_update())
        if existing is not None:
            return existing
    try:
        with s.begin_nested():
            s.add(row)
    except IntegrityError:
        existing = s.scalar(stmt)
        if existing is None:
            raise  # not the primary key (a missing round, say): a real error
        return existing
    return None


def add_update(
    s: Session,
    run_id: str,
    silo: str,
    payload: bytes,
    digest: str,
    shapes: list[tuple[str, tuple[int, ...]]],
    *,
    asked: int,
    filed: int,
) -> Contribution:
    """Check `silo`'s update answering round `asked` (tensors of `shapes`, metadata bound to
    that round, examples within its validated rows) and add it as a row of round `filed`
    (another round only for a buffered run's late update)."""
    contribution = checked_update(
        s, run_id, silo, payload, digest, shapes, asked=asked, filed=filed
    )
    s.add(contribution)
    s.flush()
    return contribution


def checked_update(
    s: Session,
    run_id: str,
    silo: str,
    payload: bytes,
    digest: str,
    shapes: list[tuple[str, tuple[int, ...]]],
    *,
    asked: int,
    filed: int,
) -> Contribution:
    """`silo`'s update answering round `asked`, checked as `add_update` says, as a new row
    of round `filed` (not added to the session)."""
    try:
        _, meta = tensors.decode_expected(payload, shapes)
    except TensorFormatError as exc:
        raise InvalidPayload(f"update from silo {silo!r} for round {asked}: {exc}") from exc
    n_examples, train_seconds, metrics = _update_metadata(meta, silo, asked, run_id)
    check_n_examples(s, run_id, asked, silo, n_examples, "update")
    flow_run_id = update_flow_run_id(meta, silo, asked, run_id)
    return Contribution(
        run_id=run_id,
        round=filed,
        silo=silo,
        kind="update",
        digest=digest,
        n_examples=n_examples,
        payload=payload,
        metrics_json=metrics.model_dump_json() if metrics else None,
        train_seconds=train_seconds,
        prefect_flow_run_id=flow_run_id,
    )


def latest_validation(s: Session, run_id: str, silo: str) -> dict[str, object] | None:
    """The payload of `silo`'s latest signed ``validation_result`` statement in the run (its
    gate's verdict and row count), or None when it sent none."""
    row = s.scalars(
        select(LedgerEntry.payload)
        .where(
            LedgerEntry.run_id == run_id,
            LedgerEntry.kind == "validation_result",
            LedgerEntry.author == f"silo:{silo}",
        )
        .order_by(LedgerEntry.seq.desc())
        .limit(1)
    ).first()
    return json.loads(row) if row is not None else None


def check_n_examples(
    s: Session, run_id: str, number: int, silo: str, n_examples: int, what: str
) -> None:
    """Refuse (InvalidPayload) an example count above the rows `silo` last validated.

    `n_examples` weighs a silo's update in FedAvg (and its masked update, via the advertised
    weight, in secure rounds; its trees in the bagging merge): an unbounded claim would let
    one silo outweigh the others. Every built-in mode runs the silo's validation gate, which
    signs the table's row count (``n_rows``), before the round's first answer, so a silo
    without a passing statement in this run has nothing to claim against.
    """
    where = f"{what} from silo {silo!r} for round {number} of run {run_id}"
    summary = latest_validation(s, run_id, silo)
    if summary is None:
        raise InvalidPayload(
            f"{where} claims n_examples={n_examples}, but the silo sent no validation statement "
            "in this run: its agent runs the validation gate (and signs the row count) before "
            "a round's first answer"
        )
    if not summary.get("success"):
        raise InvalidPayload(
            f"{where} claims n_examples={n_examples}, but the silo's latest validation "
            f"statement (round {summary.get('round')}) failed: it sits the round out"
        )
    rows = summary.get("n_rows")
    if not isinstance(rows, int) or n_examples > rows:
        raise InvalidPayload(
            f"{where} claims n_examples={n_examples}, more than the {rows} rows the silo "
            f"validated (round {summary.get('round')}); an update may weigh at most its "
            "validated rows"
        )


def _update_metadata(
    meta: dict[str, str], silo: str, number: int, run_id: str
) -> tuple[int, float | None, Metrics | None]:
    where = f"update from silo {silo!r} for round {number}"
    if meta.get("run_id") != run_id or meta.get("round") != str(number):
        raise InvalidPayload(
            f"{where}: payload is bound to run {meta.get('run_id')!r} round {meta.get('round')!r}"
        )
    try:
        n_examples = int(meta["n_examples"])
    except (KeyError, ValueError) as exc:
        raise InvalidPayload(f"{where}: metadata n_examples is missing or not an integer") from exc
    if not 0 < n_examples <= INT32_MAX:
        raise InvalidPayload(
            f"{where}: metadata n_examples must be between 1 and {INT32_MAX}, got "
            f"{str(n_examples)[:24]}"
        )
    try:
        train_seconds = float(meta["train_seconds"]) if "train_seconds" in meta else None
        if train_seconds is not None and not 0 <= train_seconds < float("inf"):
            raise ValueError(f"train_seconds {meta['train_seconds'][:24]!r} is not a duration")
        metrics = Metrics.model_validate_json(meta["metrics"]) if "metrics" in meta else None
    except (ValueError, ValidationError) as exc:
        raise InvalidPayload(f"{where}: metadata train_seconds/metrics malformed: {exc}") from exc
    return n_examples, train_seconds, metrics


def update_flow_run_id(meta: dict[str, str], silo: str, number: int, run_id: str) -> str | None:
    """The silo's Prefect flow run id from an update's metadata (None when it sent none).

    Refused (InvalidPayload), never cut short: the id is how a reviewer finds the silo's flow
    run in Prefect, so a truncated one would point nowhere, and the column holds 64 characters.
    """
    value = meta.get("prefect_flow_run_id", "")
    if len(value) > MAX_FLOW_RUN_ID or "\x00" in value:
        raise InvalidPayload(
            f"update from silo {silo!r} for round {number} of run {run_id}: metadata "
            f"prefect_flow_run_id must be at most {MAX_FLOW_RUN_ID} characters without NUL "
            f"(got {len(value)}); send the flow run's id (a 36-character UUID)"
        )
    return value or None


def submit_refusal(s: Session, run_id: str, silo: str, reason: str) -> tuple[RunSilo, bool]:
    """A silo declines a whole run (its policy forbids it); later rounds stop waiting for it.

    Returns (membership, changed now).
    """
    run = get_run(s, run_id, for_update=True)
    membership = s.get(RunSilo, (run_id, silo))
    if membership is None:
        raise Forbidden(f"silo {silo!r} is not a participant of run {run_id}")
    if membership.status == "refused":
        return membership, False
    membership.status = "refused"
    membership.reason = reason
    if run.current_round:
        rnd = get_round(s, run_id, run.current_round)
        if rnd.status == "open" and s.get(Contribution, (run_id, rnd.number, silo)) is None:
            # an answer stored meanwhile (an update, which locks no run) stays the answer
            stored_once(
                s,
                Contribution(
                    run_id=run_id, round=rnd.number, silo=silo, kind="refusal", reason=reason
                ),
            )
    return membership, True


def submit_evaluation(
    s: Session, run_id: str, number: int, silo: str, report: MetricsReport
) -> tuple[Contribution, bool]:
    existing = s.get(Contribution, (run_id, number, silo))
    if existing is not None:
        return _evaluation_again(existing, report), False
    open_round_for(s, run_id, number, silo, "evaluate")
    contribution = Contribution(
        run_id=run_id,
        round=number,
        silo=silo,
        kind="evaluation",
        n_examples=report.metrics.n_test,
        metrics_json=report.metrics.model_dump_json(),
        prefect_flow_run_id=report.prefect_flow_run_id,
    )
    existing = stored_once(s, contribution)
    if existing is not None:  # a concurrent request of the silo's stored its answer first
        return _evaluation_again(existing, report), False
    return contribution, True


def _evaluation_again(existing: Contribution, report: MetricsReport) -> Contribution:
    """A stored answer, when the silo sends `report` again: the same metrics are a duplicate
    (returned), anything else is refused."""
    if existing.kind == "evaluation" and existing.metrics_json == report.metrics.model_dump_json():
        return existing
    raise AlreadyAnswered(
        f"silo {existing.silo!r} already answered round {existing.round} of run {existing.run_id}"
    )


def submit_sit_out(s: Session, run_id: str, number: int, silo: str, reason: str) -> bool:
    """A silo sits out one round (its data failed the contract's validation); returns whether
    this was recorded now (False for a repeated request)."""
    existing = s.get(Contribution, (run_id, number, silo))
    if existing is None:
        rnd = get_round(s, run_id, number)
        open_round_for(s, run_id, number, silo, rnd.kind)
        row = Contribution(run_id=run_id, round=number, silo=silo, kind="sat_out", reason=reason)
        existing = stored_once(s, row)
        if existing is None:
            return True
    if existing.kind == "sat_out":
        return False
    raise AlreadyAnswered(f"silo {silo!r} already answered round {number} of run {run_id}")


def sat_out_reasons(s: Session, run_id: str, number: int) -> str:
    """'silo: reason; ...' for every silo that sat this round out (for failure messages)."""
    rows = s.scalars(
        select(Contribution).where(
            Contribution.run_id == run_id,
            Contribution.round == number,
            Contribution.kind.in_(("sat_out", "refusal", "declined")),
        )
    )
    return "; ".join(f"{c.silo}: {c.reason}" for c in rows)
