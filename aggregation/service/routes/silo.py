"""Endpoints silo agents call, every one authenticated by the silo's request signature."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Header, Query, Request, Response
from pydantic import BaseModel, ConfigDict, ValidationError
from sqlalchemy.orm import Session, sessionmaker
from starlette.concurrency import run_in_threadpool

from aggregation.service import contributions as crud
from aggregation.service.auth import SiloIdentity
from aggregation.service.closing import advance_secure
from aggregation.service.db import transaction
from aggregation.service.deps import FactoryDep, RecorderDep, SettingsDep, SiloDep
from aggregation.service.exceptions import Forbidden, InvalidPayload, ServiceError
from aggregation.service.federations import find_silo, silo_out
from aggregation.service.lineage import Recorder
from aggregation.service.rounds import get_round
from aggregation.service.routes.polling import long_poll
from aggregation.service.runs import get_model, spec_of
from aggregation.service.tables import Contribution, Run, RunSilo
from aggregation.service.tasks import next_task
from schemas.lineage import LineageError
from schemas.signing import STATEMENT_HEADER, update_statement_payload
from schemas.wire import MetricsReport, Refusal, SiloOut, Task

router = APIRouter(prefix="/v1", tags=["silo"])


@router.get("/silo/me")
def whoami(silo: SiloDep, factory: FactoryDep) -> SiloOut:
    with transaction(factory) as s:
        row = find_silo(s, silo.federation, silo.name)
        assert row is not None
        return silo_out(row)


@router.get(
    "/silo/tasks", response_model=None, responses={204: {"description": "no work within the wait"}}
)
async def poll_task(
    request: Request,
    silo: SiloDep,
    factory: FactoryDep,
    settings: SettingsDep,
    wait: Annotated[float, Query(ge=0)] = 0,
    run_id: str | None = None,
) -> Task | Response:
    """Long-poll for the silo's next task (optionally within one run)."""
    seal_public: bytes = request.app.state.seal_public

    def check() -> Task | None:
        with transaction(factory) as s:
            return next_task(s, silo.federation, silo.name, run_id, seal_public)

    task = await long_poll(check, min(wait, settings.long_poll_max_s), settings.poll_interval_s)
    return task if task is not None else Response(status_code=204)


@router.get("/silo/runs/{run_id}/models/{version}", response_class=Response)
def download_model(run_id: str, version: int, silo: SiloDep, factory: FactoryDep) -> Response:
    with transaction(factory) as s:
        if s.get(RunSilo, (run_id, silo.name)) is None:
            raise Forbidden(f"silo {silo.name!r} is not a participant of run {run_id}")
        model = get_model(s, run_id, version)
        return Response(
            model.payload,
            media_type="application/octet-stream",
            headers={"X-Fedsilo-Sha256": model.sha256},
        )


@router.post("/silo/runs/{run_id}/rounds/{number}/update")
async def submit_update(
    run_id: str,
    number: int,
    silo: SiloDep,
    factory: FactoryDep,
    recorder: RecorderDep,
    response: Response,
    statement_signature: Annotated[str | None, Header(alias=STATEMENT_HEADER)] = None,
) -> dict[str, object]:
    """Accept an update and the silo's signed ledger statement; answer with a receipt."""

    def store() -> dict[str, object]:
        with transaction(factory) as s:
            c, created = crud.submit_update(s, run_id, number, silo.name, silo.body)
            return accept_statement(s, recorder, silo, run_id, c, created, statement_signature)

    try:
        result = await run_in_threadpool(store)
    except ServiceError as exc:
        await run_in_threadpool(record_rejection, factory, recorder, run_id, number, silo.name, exc)
        raise
    response.status_code = 200 if result["duplicate"] else 201
    return result


def accept_statement(
    s: Session,
    recorder: Recorder,
    silo: SiloIdentity,
    run_id: str,
    c: Contribution,
    created: bool,
    statement_signature: str | None,
) -> dict[str, object]:
    """Record the silo's signed `update_accepted` statement for a stored update; the receipt.

    A resubmission of the same update (created False) was acknowledged the first time.
    """
    if not created:
        return {"digest": c.digest, "duplicate": True, "receipt": None}
    if not statement_signature:
        raise InvalidPayload(
            f"update from silo {silo.name!r} for round {c.round} lacks its signed ledger "
            f"statement ({STATEMENT_HEADER} header)"
        )
    row = find_silo(s, silo.federation, silo.name)
    assert row is not None
    payload = update_statement_payload(silo.name, c.round, c.digest or "", c.n_examples or 0)
    try:
        _, receipt = recorder.silo(
            s, "update_accepted", payload, run_id, silo.name, statement_signature, row.public_key
        )
    except LineageError as exc:
        raise InvalidPayload(f"update from silo {silo.name!r}: {exc}") from exc
    return {"digest": c.digest, "duplicate": False, "receipt": receipt.model_dump()}


def record_rejection(
    factory: sessionmaker[Session],
    recorder: Recorder,
    run_id: str,
    number: int,
    silo: str,
    exc: ServiceError,
) -> None:
    """A rejected update leaves round state untouched but is recorded, in its own transaction."""
    with transaction(factory) as s:
        if s.get(Run, run_id) is None or s.get(RunSilo, (run_id, silo)) is None:
            return
        recorder.service(
            s,
            "update_rejected",
            {"silo": silo, "round": number, "status": exc.status_code, "reason": exc.detail},
            run_id,
        )


@router.post("/silo/runs/{run_id}/rounds/{number}/evaluation")
def submit_evaluation(
    run_id: str, number: int, silo: SiloDep, factory: FactoryDep, response: Response
) -> dict[str, object]:
    report = _parse(MetricsReport, silo.body, silo.name)
    with transaction(factory) as s:
        _, created = crud.submit_evaluation(s, run_id, number, silo.name, report)
    response.status_code = 201 if created else 200
    return {"duplicate": not created}


@router.post("/silo/runs/{run_id}/refusal")
def refuse_run(
    run_id: str, silo: SiloDep, factory: FactoryDep, recorder: RecorderDep
) -> dict[str, str]:
    refusal = _parse(Refusal, silo.body, silo.name)
    with transaction(factory) as s:
        _, changed = crud.submit_refusal(s, run_id, silo.name, refusal.reason)
        if changed:
            recorder.service(
                s, "silo_refused", {"silo": silo.name, "reason": refusal.reason}, run_id
            )
            _unblock_secure_round(s, run_id, recorder)
    return {"status": "refused"}


def _parse(model, body: bytes, silo: str):  # type: ignore[no-untyped-def]
    try:
        return model.model_validate_json(body)
    except ValidationError as exc:
        raise InvalidPayload(f"{model.__name__} from silo {silo!r} is malformed: {exc}") from exc


class StatementIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    kind: Literal["privacy_spent", "validation_result"]
    payload: dict[str, Any]
    signature: str


@router.post("/silo/runs/{run_id}/statements", status_code=201)
def submit_statement(
    run_id: str, silo: SiloDep, factory: FactoryDep, recorder: RecorderDep
) -> dict[str, object]:
    """A silo's signed lineage statement (privacy spent, validation result); returns a receipt."""
    body = _parse(StatementIn, silo.body, silo.name)
    if body.payload.get("silo") != silo.name:
        raise InvalidPayload(
            f"{body.kind} statement from silo {silo.name!r} names silo {body.payload.get('silo')!r}"
        )
    with transaction(factory) as s:
        if s.get(RunSilo, (run_id, silo.name)) is None:
            raise Forbidden(f"silo {silo.name!r} is not a participant of run {run_id}")
        row = find_silo(s, silo.federation, silo.name)
        assert row is not None
        try:
            _, receipt = recorder.silo(
                s, body.kind, body.payload, run_id, silo.name, body.signature, row.public_key
            )
        except LineageError as exc:
            raise InvalidPayload(f"{body.kind} statement from silo {silo.name!r}: {exc}") from exc
        return {"receipt": receipt.model_dump()}


def _unblock_secure_round(s: Session, run_id: str, recorder: Recorder) -> None:
    """A refusing silo is no longer awaited: the current secure stage may now be complete."""
    run = s.get(Run, run_id)
    if run is None or not run.current_round:
        return
    rnd = get_round(s, run_id, run.current_round, for_update=True)
    if rnd.status == "open" and rnd.secagg_stage is not None:
        advance_secure(s, run, rnd, spec_of(run), recorder, force=False)


@router.post("/silo/runs/{run_id}/rounds/{number}/sit-out", status_code=201)
def sit_out(
    run_id: str, number: int, silo: SiloDep, factory: FactoryDep, recorder: RecorderDep
) -> dict[str, object]:
    """The silo's data failed validation: it sits this round out, saying why."""
    body = _parse(Refusal, silo.body, silo.name)
    with transaction(factory) as s:
        created = crud.submit_sit_out(s, run_id, number, silo.name, body.reason)
        if created:
            _unblock_secure_round(s, run_id, recorder)
    return {"recorded": created}
