"""A silo's next task: long-polled for a task poll (``GET /v1/silo/tasks``), or after an
answer that asks for it (``next_wait``, `schemas.tasks.NEXT_WAIT_PARAM`: a secure-aggregation
message, a masked or a plain update), so that the answer brings the poll's task and the
agent sends one request per step instead of two."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Annotated

from fastapi import Depends, Query, Request

from aggregation.service import checkpoints
from aggregation.service.db import transaction
from aggregation.service.deps import MAX_WAIT_S, FactoryDep, HubDep, ParticipantDep, SettingsDep
from aggregation.service.exceptions import InvalidPayload
from aggregation.service.keys import public_hex
from aggregation.service.metrics import observe_poll
from aggregation.service.routes.polling import long_poll
from aggregation.service.tasks import next_task, with_inbox, with_model
from aggregation.service.wakeup import wakeup_of
from schemas.ledger_checkpoint import MAX_COUNTERSIGNED_PER_POLL, parse_countersigned
from schemas.tasks import (
    INLINE_INBOX_PARAM,
    INLINE_MODEL_PARAM,
    NEXT_TASK_FIELD,
    NEXT_WAIT_PARAM,
    Task,
)

log = logging.getLogger("fedsilo.service")


@dataclass
class Follow:
    """What an answer asked of its next task: how long to wait for it, what to bring inline,
    and the countersignatures of ledger checkpoints it carried (kept by the first look)."""

    wait_s: float = 0.0
    inline_model: bool = False
    inline_inbox: bool = False
    signed: list[tuple[int, str]] = field(default_factory=list)


Countersigned = Annotated[
    str | None,
    Query(
        max_length=MAX_COUNTERSIGNED_PER_POLL * 141,
        description="the silo's countersignatures of ledger checkpoints, "
        "<height>.<Ed25519 signature hex> joined by '_'",
    ),
]
InlineModel = Annotated[
    bool,
    Query(
        alias=INLINE_MODEL_PARAM,
        description="bring the task's model inline when it needs one and it is small "
        "(`schemas.tasks.INLINE_MODEL_TASKS`, INLINE_MODEL_MAX_BYTES)",
    ),
]

InlineInbox = Annotated[
    bool,
    Query(
        alias=INLINE_INBOX_PARAM,
        description="bring what a secure-aggregation stage fetches first inline when it is "
        "ready and small (`schemas.tasks.INLINE_INBOX`, INLINE_INBOX_MAX_BYTES)",
    ),
]


def parse_countersigned_param(silo: str, text: str | None) -> list[tuple[int, str]]:
    """The ``countersigned`` parameter of a poll, or of an answer that asks for its next
    task: (height, signature hex) pairs, none when absent."""
    return _parse_countersigned(silo, text) if text else []


def _parse_countersigned(silo: str, text: str) -> list[tuple[int, str]]:
    """The countersignatures a poll carried. One that does not verify is later logged, not
    fatal to the poll: the silo's own copy is its anchor, and its next poll must not fail."""
    try:
        return parse_countersigned(text)
    except ValueError as exc:
        raise InvalidPayload(f"silo {silo!r}: bad countersigned parameter: {exc}") from exc


NextWait = Annotated[
    float,
    Query(
        alias=NEXT_WAIT_PARAM,
        ge=0,
        le=MAX_WAIT_S,
        description="once the answer is stored, long-poll up to this many seconds for the "
        f"silo's next task in the run and bring it as {NEXT_TASK_FIELD!r} "
        "(`schemas.tasks.NEXT_WAIT_PARAM`)",
    ),
]


async def follow_of(
    silo: ParticipantDep,
    next_wait: NextWait = 0,
    inline_model: InlineModel = False,
    inline_inbox: InlineInbox = False,
    countersigned: Countersigned = None,
) -> Follow:
    """What an answer's query asks of the silo's next task (`Follow`); on the event loop,
    since it reads only the query."""
    signed = parse_countersigned_param(silo.name, countersigned)
    return Follow(next_wait, inline_model, inline_inbox, signed)


FollowDep = Annotated[Follow, Depends(follow_of)]


async def wait_for_task(
    request: Request,
    factory: FactoryDep,
    settings: SettingsDep,
    hub: HubDep,
    federation: str,
    silo: str,
    run_id: str | None,
    *,
    wait: float,
    signed: list[tuple[int, str]],
    inline_model: bool,
    inline_inbox: bool,
    subscribed: asyncio.Event | None = None,
) -> Task | None:
    """`silo`'s next task (within run `run_id`), long-polled up to `wait` seconds: what a task
    poll answers, and what an answer that asks brings back (``next_wait``; it
    subscribed to wakes before storing the answer: `long_poll`'s `subscribed`). The first
    check's transaction keeps the countersignatures in `signed` (a failed one: re-sent)."""
    service_key = public_hex(request.app.state.recorder.service_key)

    def check() -> Task | None:
        with transaction(factory) as s:
            if signed:
                for problem in checkpoints.add_countersignatures(s, federation, silo, signed):
                    log.warning("silo %s: countersignature refused: %s", silo, problem)
                signed.clear()
            task = next_task(s, federation, silo, run_id, hub)
            if task is None:
                return None
            if inline_model:
                task = with_model(s, task)
            if inline_inbox:
                task = with_inbox(s, hub, task, silo)
            return checkpoints.with_pending(s, task, federation, silo, service_key)

    wait_s = min(wait, settings.long_poll_max_s)
    started = time.monotonic()
    wakeup = wakeup_of(factory)
    task: Task | None = await long_poll(
        check, wait_s, settings.poll_interval_s, wakeup, subscribed=subscribed
    )
    observe_poll(factory, time.monotonic() - started, task is not None)
    return task


async def stored_then_next_task(
    request: Request,
    factory: FactoryDep,
    settings: SettingsDep,
    hub: HubDep,
    federation: str,
    silo: str,
    run_id: str,
    store: Callable[[], Awaitable[dict[str, object]]],
    follow: Follow,
) -> dict[str, object]:
    """`store()`'s answer, with the silo's next task in the run when it asked (`follow`) and
    one came within the wait: the poll it would have sent next, answered here, keeping the
    countersignatures the poll would have carried.

    Subscribed to wakes before the store, so that the first look waits for a commit that can
    have opened the silo's next step (the store's own, when it closed a stage or a round).
    It looks at once for a duplicate answer (its next step may have opened long ago) and to
    keep countersignatures."""
    wakeup = wakeup_of(factory) if follow.wait_s > 0 else None
    with wakeup.subscribe() if wakeup is not None else nullcontext() as woken:
        result = await store()
        if follow.wait_s <= 0:
            return result
        task = await wait_for_task(
            request, factory, settings, hub, federation, silo, run_id,
            wait=follow.wait_s, signed=follow.signed, inline_model=follow.inline_model,
            inline_inbox=follow.inline_inbox,
            subscribed=None if result.get("duplicate") or follow.signed else woken,
        )  # fmt: skip
    if task is None:
        return result
    return {**result, NEXT_TASK_FIELD: task.model_dump(mode="json")}
