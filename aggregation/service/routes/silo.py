"""Endpoints silo agents call, every one authenticated by the silo's request signature.

What a silo sends for its round's mode goes to the round's engine (`engines.registry`);
evaluations, refusals, sit-outs and statements (signed declines among them, `declines`) are
the same in every mode; ``/silo/ready`` records that the agent warmed up.
"""

from __future__ import annotations

import json
from functools import partial
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request, Response
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from aggregation.service import contributions as crud
from aggregation.service import declines, ledger
from aggregation.service.closing import unblock
from aggregation.service.control import control_payload
from aggregation.service.db import transaction
from aggregation.service.deps import (
    OCTET_BODY,
    SILO_ERRORS,
    FactoryDep,
    HubDep,
    ModelVersion,
    OptionalName,
    ParticipantDep,
    RoundNumber,
    RunId,
    SettingsDep,
    SiloDep,
    StatementSignature,
    Wait,
    octet_stream,
)
from aggregation.service.exceptions import InvalidPayload, PayloadTooLarge
from aggregation.service.federations import find_silo, mark_ready, silo_out
from aggregation.service.keys import public_hex
from aggregation.service.routes.dispatch import submission
from aggregation.service.routes.next_task import (
    Countersigned,
    FollowDep,
    InlineInbox,
    InlineModel,
    parse_countersigned_param,
    stored_then_next_task,
    wait_for_task,
)
from aggregation.service.runs import get_model
from aggregation.service.statements import admit_statement, record_silo_statement
from schemas.distill_statement import DistilledPayload
from schemas.ensemble import EnsembledPayload
from schemas.ledger_silo_copy import SiloRecord
from schemas.lineage import EntrySigner, LineageEntry, Statement
from schemas.personalization import PersonalizedPayload
from schemas.tasks import Task
from schemas.wire import (
    INT32_MAX,
    MAX_SILO_RECORDS,
    OCTET_STREAM,
    TEXT_PATTERN,
    MetricsReport,
    ReadyIn,
    Refusal,
    SiloOut,
    SiloRecordPage,
)

router = APIRouter(prefix="/v1", tags=["silo"], responses=SILO_ERRORS)


class StatementIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    kind: Literal[
        "privacy_spent", "validation_result", "decline", "personalized", "distilled", "ensembled"
    ]
    payload: dict[str, Any]
    signature: str = Field(max_length=256, pattern=TEXT_PATTERN)

    def payload_bytes(self) -> int:
        """The payload's size as compact UTF-8 JSON (what the ledger keeps, give or take)."""
        text = json.dumps(self.payload, separators=(",", ":"), ensure_ascii=False)
        return len(text.encode())


# The ledger is append-only: a statement's payload is bounded, well above what honest silos
# sign. A validation_result grows with the contract (each failed or warning check names its
# expectation and column: about 1 KB per column when every check of a column fails; a
# 1000-column contract that fails everywhere signs about 0.95 MB); every other kind is a few
# hundred bytes (personalized, distilled and ensembled are fixed models, under 2 KB).
MAX_STATEMENT_BYTES = 64 * 1024
MAX_STATEMENT_BYTES_BY_KIND = {"validation_result": 1024 * 1024}


def json_body(model: type[BaseModel]) -> dict[str, Any]:
    """`openapi_extra` of a signed route that parses its JSON body itself (after the
    signature check): the body's schema, for clients and fuzzers."""
    schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
    schema.pop("$defs", None)
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}


@router.get("/silo/me")
def whoami(silo: SiloDep, factory: FactoryDep) -> SiloOut:
    with transaction(factory) as s:
        row = find_silo(s, silo.federation, silo.name)
        assert row is not None
        return silo_out(row)


@router.get("/silo/ledger/records")
def own_records(
    request: Request,
    silo: SiloDep,
    factory: FactoryDep,
    after: Annotated[int, Query(ge=0, le=INT32_MAX, description="entries past this seq")] = 0,
    limit: Annotated[int, Query(ge=1, le=MAX_SILO_RECORDS, description="at most this many")] = (
        MAX_SILO_RECORDS
    ),
    run_id: OptionalName = None,
    kind: Annotated[str | None, Query(pattern=r"^[a-z_]{1,64}$")] = None,
) -> SiloRecordPage:
    """The ledger entries the calling silo authored, in seq order, each with its statement,
    the silo's signature and the service's receipt (what the silo keeps in its copy of its
    lineage): a silo whose workspace was restored from an older state, or that lost an
    answer, gets back what it lacks. Paged by seq (`after`, `limit`)."""
    with transaction(factory) as s:
        entries = ledger.authored_by(
            s, f"silo:{silo.name}", after=after, limit=limit, run_id=run_id, kind=kind
        )
    key = request.app.state.recorder.service_key  # the key `Recorder.silo` signs receipts with
    records = [_silo_record(e, key) for e in entries if e.author_signature is not None]
    more = entries[-1].seq if len(entries) == limit else None
    return SiloRecordPage(service_key=public_hex(key), records=records, next_after=more)


def _silo_record(entry: LineageEntry, service_key: EntrySigner) -> SiloRecord:
    """`entry` as the silo kept it when the service answered: the receipt is the same
    (`Recorder.silo` signs it the same way), so `lineage verify --silo-copy` checks it."""
    statement = Statement(
        run_id=entry.run_id, kind=entry.kind, payload=entry.payload, author=entry.author
    )
    return SiloRecord(
        statement=statement,
        author_signature=entry.author_signature or "",
        receipt=ledger.receipt(entry, service_key),
    )


@router.post("/silo/ready", openapi_extra=json_body(ReadyIn))
def ready(silo: SiloDep, factory: FactoryDep) -> SiloOut:
    """The silo's agent validated its data and warmed up; the coordinator sees it ready."""
    body = _parse(ReadyIn, silo.body, silo.name)
    with transaction(factory) as s:
        return silo_out(mark_ready(s, silo.federation, silo.name, body))


@router.get(
    "/silo/tasks", response_model=None, responses={204: {"description": "no work within the wait"}}
)
async def poll_task(
    request: Request,
    silo: SiloDep,
    factory: FactoryDep,
    settings: SettingsDep,
    hub: HubDep,
    wait: Wait = 0,
    run_id: OptionalName = None,
    countersigned: Countersigned = None,
    inline_model: InlineModel = False,
    inline_inbox: InlineInbox = False,
) -> Task | Response:
    """Long-poll for the silo's next task (optionally within one run). The poll brings the
    silo's countersignatures of ledger checkpoints; a task brings the checkpoints it has still
    to countersign (`schemas.ledger_checkpoint`), with `inline_model` the model it needs
    (`schemas.tasks.INLINE_MODEL_TASKS`), with `inline_inbox` the messages its stage starts
    from (`schemas.tasks.INLINE_INBOX`)."""
    signed = parse_countersigned_param(silo.name, countersigned)
    task = await wait_for_task(
        request, factory, settings, hub, silo.federation, silo.name, run_id,
        wait=wait, signed=signed, inline_model=inline_model, inline_inbox=inline_inbox,
    )  # fmt: skip
    return task if task is not None else Response(status_code=204)


@router.get(
    "/silo/runs/{run_id}/models/{version}",
    response_class=Response,
    responses=octet_stream("the model version (safetensors)"),
)
def download_model(
    run_id: RunId, version: ModelVersion, silo: ParticipantDep, factory: FactoryDep
) -> Response:
    with transaction(factory) as s:
        model = get_model(s, run_id, version)
        return Response(
            model.payload, media_type=OCTET_STREAM, headers={"X-Fedsilo-Sha256": model.sha256}
        )


@router.get(
    "/silo/runs/{run_id}/models/{version}/control",
    response_class=Response,
    responses=octet_stream("SCAFFOLD's global control variate for the model version"),
)
def download_control(
    run_id: RunId, version: ModelVersion, silo: ParticipantDep, factory: FactoryDep
) -> Response:
    with transaction(factory) as s:
        return Response(control_payload(s, run_id, version), media_type=OCTET_STREAM)


@router.post("/silo/runs/{run_id}/rounds/{number}/update", openapi_extra=OCTET_BODY)
async def submit_update(
    run_id: RunId,
    number: RoundNumber,
    silo: ParticipantDep,
    factory: FactoryDep,
    hub: HubDep,
    response: Response,
    request: Request,
    settings: SettingsDep,
    follow: FollowDep,
    statement_signature: StatementSignature = None,
) -> dict[str, object]:
    """Accept a tensor update and the silo's signed ledger statement; answer with a receipt
    (and, when it asks, the silo's next task: `next_task.stored_then_next_task`)."""
    args = (run_id, number, silo, factory, hub, response, statement_signature)
    store = partial(submission, "update", *args)
    return await stored_then_next_task(
        request, factory, settings, hub, silo.federation, silo.name, run_id, store, follow
    )


@router.post("/silo/runs/{run_id}/rounds/{number}/extension", openapi_extra=OCTET_BODY)
async def submit_extension(
    run_id: RunId,
    number: RoundNumber,
    silo: ParticipantDep,
    factory: FactoryDep,
    hub: HubDep,
    response: Response,
    statement_signature: StatementSignature = None,
) -> dict[str, object]:
    """A plugin round mode's answer (octet-stream, the mode's own format): its engine
    validates and stores it. 201, or 200 when the engine says it is a duplicate."""
    args = (run_id, number, silo, factory, hub, response, statement_signature)
    return await submission("extension", *args, lock_round=True)


@router.post(
    "/silo/runs/{run_id}/rounds/{number}/evaluation", openapi_extra=json_body(MetricsReport)
)
def submit_evaluation(
    run_id: RunId,
    number: RoundNumber,
    silo: ParticipantDep,
    factory: FactoryDep,
    response: Response,
) -> dict[str, object]:
    report = _parse(MetricsReport, silo.body, silo.name)
    with transaction(factory) as s:
        _, created = crud.submit_evaluation(s, run_id, number, silo.name, report)
    response.status_code = 201 if created else 200
    return {"duplicate": not created}


@router.post("/silo/runs/{run_id}/refusal", openapi_extra=json_body(Refusal))
def refuse_run(
    run_id: RunId, silo: ParticipantDep, factory: FactoryDep, hub: HubDep
) -> dict[str, str]:
    refusal = _parse(Refusal, silo.body, silo.name)
    with transaction(factory) as s:
        _, changed = crud.submit_refusal(s, run_id, silo.name, refusal.reason)
        if changed:
            entry = {"silo": silo.name, "reason": refusal.reason}
            hub.recorder.service(s, "silo_refused", entry, run_id)
            unblock(s, run_id, hub)
    return {"status": "refused"}


@router.post(
    "/silo/runs/{run_id}/rounds/{number}/sit-out", status_code=201, openapi_extra=json_body(Refusal)
)
def sit_out(
    run_id: RunId, number: RoundNumber, silo: ParticipantDep, factory: FactoryDep, hub: HubDep
) -> dict[str, object]:
    """The silo's data failed validation: it sits this round out, saying why."""
    body = _parse(Refusal, silo.body, silo.name)
    with transaction(factory) as s:
        created = crud.submit_sit_out(s, run_id, number, silo.name, body.reason)
        if created:
            unblock(s, run_id, hub)
    return {"recorded": created}


@router.post(
    "/silo/runs/{run_id}/statements",
    status_code=201,
    openapi_extra=json_body(StatementIn),
    responses={200: {"description": "a repeated decline: the first one's receipt"}},
)
def submit_statement(
    run_id: RunId, silo: ParticipantDep, factory: FactoryDep, hub: HubDep, response: Response
) -> dict[str, object]:
    """A silo's signed lineage statement (privacy spent, validation result, decline); returns
    a receipt. A decline is applied at once (`declines`): 201, or 200 when it repeats one."""
    body = _parse(StatementIn, silo.body, silo.name)
    size, bound = (
        body.payload_bytes(),
        MAX_STATEMENT_BYTES_BY_KIND.get(body.kind, MAX_STATEMENT_BYTES),
    )
    if size > bound:
        raise PayloadTooLarge(
            f"{body.kind} statement from silo {silo.name!r} for run {run_id}: its payload is "
            f"{size} bytes, more than the {bound} bytes a {body.kind} statement may have"
        )
    if body.payload.get("silo") != silo.name:
        raise InvalidPayload(
            f"{body.kind} statement from silo {silo.name!r} names silo {body.payload.get('silo')!r}"
        )
    if body.kind == "personalized":  # the silo's own model stays there: only hash and metrics
        try:
            PersonalizedPayload.model_validate(body.payload)
        except ValidationError as exc:
            raise InvalidPayload(f"personalized statement from {silo.name!r}: {exc}") from exc
    if body.kind == "distilled":  # likewise: the distilled model's hash and metrics only
        try:
            DistilledPayload.model_validate(body.payload)
        except ValidationError as exc:
            raise InvalidPayload(f"distilled statement from {silo.name!r}: {exc}") from exc
    if body.kind == "ensembled":  # the final ensemble's and the own member's held-out metrics
        try:
            EnsembledPayload.model_validate(body.payload)
        except ValidationError as exc:
            raise InvalidPayload(f"ensembled statement from {silo.name!r}: {exc}") from exc
    if body.kind == "decline":
        with transaction(factory) as s:
            receipt, created = declines.record_decline(
                s, hub, silo.federation, silo.name, run_id, body.payload, body.signature
            )
            if created:
                unblock(s, run_id, hub)
        response.status_code = 201 if created else 200
        return {"receipt": receipt, "duplicate": not created}
    with transaction(factory) as s:
        admit_statement(s, run_id, silo.name, body.kind)
        receipt = record_silo_statement(
            s,
            hub.recorder,
            silo.federation,
            silo.name,
            run_id,
            body.kind,
            body.payload,
            body.signature,
        )
        return {"receipt": receipt}


def _parse(model, body: bytes, silo: str):  # type: ignore[no-untyped-def]
    try:
        return model.model_validate_json(body)
    except ValidationError as exc:
        raise InvalidPayload(f"{model.__name__} from silo {silo!r} is malformed: {exc}") from exc
