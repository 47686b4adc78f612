"""Silo endpoints of secure aggregation: the service relays the protocol's messages.

The service stores every message in the database mailbox and never sees an individual update:
masked vectors are summed, and only the sum is unmasked.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header, Query
from pydantic import ValidationError
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from aggregation.secagg.server import close_advertise, close_shares, unmask_requests
from aggregation.service import secure_rounds
from aggregation.service.closing import advance_secure
from aggregation.service.db import transaction
from aggregation.service.deps import FactoryDep, RecorderDep, SiloDep
from aggregation.service.exceptions import Conflict, Forbidden, InvalidPayload
from aggregation.service.federations import find_silo
from aggregation.service.lineage import Recorder
from aggregation.service.rounds import get_round
from aggregation.service.runs import get_run, spec_of
from aggregation.service.tables import Contribution, Round, Run, RunSilo
from schemas import tensors
from schemas.lineage import LineageError
from schemas.secagg.messages import EncryptedShare
from schemas.signing import STATEMENT_HEADER, update_statement_payload
from schemas.wire import Metrics

router = APIRouter(prefix="/v1/silo/runs/{run_id}/rounds/{number}/secagg", tags=["secagg"])


def _context(s: Session, run_id: str, number: int, silo: str) -> tuple[Run, Round]:
    run = get_run(s, run_id, for_update=True)
    membership = s.get(RunSilo, (run_id, silo))
    if membership is None:
        raise Forbidden(f"silo {silo!r} is not a participant of run {run_id}")
    rnd = get_round(s, run_id, number, for_update=True)
    if rnd.secagg_stage is None:
        raise Conflict(f"round {number} of run {run_id} does not use secure aggregation")
    return run, rnd


@router.post("/{stage}", status_code=201)
async def post_message(
    run_id: str,
    number: int,
    stage: str,
    silo: SiloDep,
    factory: FactoryDep,
    recorder: RecorderDep,
    n_examples: Annotated[int | None, Query(ge=1)] = None,
) -> dict[str, object]:
    """advertise (with the silo's example count), share or unmask messages."""
    if stage not in ("advertise", "share", "unmask"):
        raise InvalidPayload(f"unknown secure-aggregation stage {stage!r}")
    if stage == "advertise" and n_examples is None:
        raise InvalidPayload(f"silo {silo.name!r}: advertise needs ?n_examples=N (the weight)")

    def store() -> dict[str, object]:
        with transaction(factory) as s:
            run, rnd = _context(s, run_id, number, silo.name)
            spec = spec_of(run)
            secure_rounds.receive(s, run, rnd, spec, stage, silo.name, silo.body, n_examples)
            advance_secure(s, run, rnd, spec, recorder, force=False)
            return {"stage": rnd.secagg_stage, "round_status": rnd.status}

    return await run_in_threadpool(store)


@router.post("/masked/update", status_code=201)
async def post_masked(
    run_id: str,
    number: int,
    silo: SiloDep,
    factory: FactoryDep,
    recorder: RecorderDep,
    train_seconds: float,
    n_examples: Annotated[int, Query(ge=1)],
    statement_signature: Annotated[str | None, Header(alias=STATEMENT_HEADER)] = None,
    metrics: str | None = None,
) -> dict[str, object]:
    """The masked update (or statistics), the silo's evaluation metrics of the model it
    started from, and its signed ledger statement."""
    try:
        parsed = Metrics.model_validate_json(metrics) if metrics else None
    except ValidationError as exc:
        raise InvalidPayload(f"metrics from silo {silo.name!r} are malformed: {exc}") from exc
    if not statement_signature:
        raise InvalidPayload(
            f"masked update from silo {silo.name!r} lacks its signed ledger "
            f"statement ({STATEMENT_HEADER} header)"
        )

    def store() -> dict[str, object]:
        with transaction(factory) as s:
            run, rnd = _context(s, run_id, number, silo.name)
            spec = spec_of(run)
            if s.get(Contribution, (run_id, number, silo.name)) is not None:
                raise Conflict(f"silo {silo.name!r} already answered round {number} of {run_id}")
            secure_rounds.receive(s, run, rnd, spec, "masked", silo.name, silo.body)
            digest = tensors.digest(silo.body)
            s.add(
                Contribution(
                    run_id=run_id,
                    round=number,
                    silo=silo.name,
                    kind="update",
                    digest=digest,
                    n_examples=n_examples,
                    payload=None,
                    metrics_json=parsed.model_dump_json() if parsed else None,
                    train_seconds=train_seconds,
                )
            )
            receipt = _statement(
                s,
                recorder,
                run,
                silo.federation,
                silo.name,
                number,
                digest,
                n_examples,
                statement_signature,
            )
            advance_secure(s, run, rnd, spec, recorder, force=False)
            return {"digest": digest, "duplicate": False, "receipt": receipt}

    return await run_in_threadpool(store)


def _statement(
    s: Session,
    recorder: Recorder,
    run: Run,
    federation: str,
    silo: str,
    number: int,
    digest: str,
    n_examples: int,
    signature: str,
) -> dict[str, object]:
    row = find_silo(s, federation, silo)
    assert row is not None
    payload = update_statement_payload(silo, number, digest, n_examples)
    try:
        _, receipt = recorder.silo(
            s, "update_accepted", payload, run.id, silo, signature, row.public_key
        )
    except LineageError as exc:
        raise InvalidPayload(f"masked update from silo {silo!r}: {exc}") from exc
    return receipt.model_dump()


@router.get("/{stage}")
def get_messages(
    run_id: str, number: int, stage: str, silo: SiloDep, factory: FactoryDep
) -> dict[str, object]:
    """What the silo needs for its next stage: every advert, its own shares, or its unmask
    request (hex-encoded protocol messages)."""
    with transaction(factory) as s:
        run, rnd = _context(s, run_id, number, silo.name)
        spec = spec_of(run)
        order = secure_rounds.STAGES.index(rnd.secagg_stage or "advertise")
        if stage == "adverts" and order >= 1:
            state = secure_rounds.rebuild(s, run, rnd, spec, at="advertise")
            return {"messages": [m.to_bytes().hex() for m in close_advertise(state)]}
        if stage == "shares" and order >= 2:
            state = secure_rounds.rebuild(s, run, rnd, spec, at="share")
            mine: tuple[EncryptedShare, ...] = close_shares(state).get(silo.name, ())
            return {"messages": [m.to_bytes().hex() for m in mine]}
        if stage == "unmask-request" and order >= 3:
            state = secure_rounds.rebuild(s, run, rnd, spec)
            request = unmask_requests(state).get(silo.name)
            if request is None:
                raise Forbidden(f"silo {silo.name!r} is not a survivor of round {number}")
            return {"message": request.to_bytes().hex()}
    raise Conflict(f"round {number} is at stage {rnd.secagg_stage!r}; {stage!r} is not ready")
