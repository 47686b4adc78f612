"""Silo endpoints of secure aggregation: the service relays the protocol's messages.

The service stores every message in the database mailbox and never sees an individual update:
masked vectors are summed, and only the sum is unmasked. Lists of protocol messages go back
as octet-stream bodies of frames (`schemas.frames`).
"""

from __future__ import annotations

from functools import partial
from typing import Annotated

from fastapi import APIRouter, Query, Request, Response

from aggregation.service.db import transaction
from aggregation.service.deps import (
    OCTET_BODY,
    SILO_ERRORS,
    FactoryDep,
    HubDep,
    ParticipantDep,
    RoundNumber,
    RunId,
    SettingsDep,
    Stage,
    StatementSignature,
    octet_stream,
)
from aggregation.service.engines import secure
from aggregation.service.engines.async_secure import READY
from aggregation.service.engines.base import Answer
from aggregation.service.engines.context import round_context
from aggregation.service.exceptions import InvalidPayload
from aggregation.service.routes.dispatch import receive_answer
from aggregation.service.routes.next_task import Follow, FollowDep, stored_then_next_task
from schemas.frames import pack_frames
from schemas.wire import INT32_MAX, MAX_TEXT, OCTET_STREAM, TEXT_PATTERN

MAX_TRAIN_SECONDS = 365 * 24 * 3600.0

router = APIRouter(
    prefix="/v1/silo/runs/{run_id}/rounds/{number}/secagg",
    tags=["secagg"],
    responses=SILO_ERRORS,
)


@router.post("/{stage}", status_code=201, openapi_extra=OCTET_BODY)
async def post_message(
    request: Request,
    run_id: RunId,
    number: RoundNumber,
    stage: Stage,
    silo: ParticipantDep,
    factory: FactoryDep,
    settings: SettingsDep,
    hub: HubDep,
    follow: FollowDep,
    n_examples: Annotated[int | None, Query(ge=1, le=INT32_MAX)] = None,
) -> dict[str, object]:
    """advertise (with the silo's example count), share, consistency (the signed survivor
    list, when the round runs the check) or unmask messages; in an asynchronous secure run,
    ``ready`` (empty body, with the example count): the silo trained for this round and
    waits for a buffer's cohort."""
    if stage not in (*secure.MESSAGE_STEPS, READY):
        raise InvalidPayload(f"unknown secure-aggregation stage {stage!r}")
    step = secure.STEP_PREFIX + stage
    answer = Answer(silo.federation, silo.name, step, silo.body, {"n_examples": n_examples})
    return await _locked_then_next_task(
        request, factory, settings, hub, answer, run_id, number, follow
    )


@router.post("/masked/update", status_code=201, openapi_extra=OCTET_BODY)
async def post_masked(
    request: Request,
    run_id: RunId,
    number: RoundNumber,
    silo: ParticipantDep,
    factory: FactoryDep,
    settings: SettingsDep,
    hub: HubDep,
    train_seconds: Annotated[float, Query(ge=0, le=MAX_TRAIN_SECONDS)],
    n_examples: Annotated[int, Query(ge=1, le=INT32_MAX)],
    follow: FollowDep,
    statement_signature: StatementSignature = None,
    metrics: Annotated[str | None, Query(max_length=MAX_TEXT, pattern=TEXT_PATTERN)] = None,
) -> dict[str, object]:
    """The masked update (or statistics), the silo's evaluation metrics of the model it
    started from, and its signed ledger statement."""
    params = {"n_examples": n_examples, "train_seconds": train_seconds, "metrics": metrics}
    step = secure.STEP_PREFIX + "masked"
    answer = Answer(silo.federation, silo.name, step, silo.body, params, statement_signature)
    return await _locked_then_next_task(
        request, factory, settings, hub, answer, run_id, number, follow
    )


async def _locked_then_next_task(
    request: Request,
    factory: FactoryDep,
    settings: SettingsDep,
    hub: HubDep,
    answer: Answer,
    run_id: str,
    number: int,
    follow: Follow,
) -> dict[str, object]:
    """`answer` stored with the run's and the round's locks (one stage's answers close it in
    turn), then the silo's next task when it asked (`next_task.stored_then_next_task`)."""
    store = partial(
        receive_answer, factory, hub, run_id, number, answer,
        lock_run=True, lock_round=True, record=None,
    )  # fmt: skip
    where = (answer.federation, answer.silo, run_id)
    return await stored_then_next_task(request, factory, settings, hub, *where, store, follow)


@router.get(
    "/{what}", response_class=Response, responses=octet_stream("protocol messages, as frames")
)
def get_messages(
    run_id: RunId,
    number: RoundNumber,
    what: Stage,
    silo: ParticipantDep,
    factory: FactoryDep,
    hub: HubDep,
) -> Response:
    """What the silo needs for its next stage, as frames: every advert (``adverts``), its own
    shares (``shares``) or its unmask request (``unmask-request``, one frame).

    Lock-free: it reads only messages of stages already closed (a closed stage takes no more
    messages), so a concurrent writer cannot change the answer, and must not wait behind it."""
    with transaction(factory) as s:
        ctx = round_context(s, hub, run_id, number)
        frames = secure.inbox(ctx, silo.name, what)
    return Response(pack_frames(frames), media_type=OCTET_STREAM)
