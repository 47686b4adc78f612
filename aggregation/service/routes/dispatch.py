"""Handing a silo's answer to its round's engine, from any route that takes one."""

from __future__ import annotations

from fastapi import Response
from sqlalchemy.orm import Session, sessionmaker
from starlette.concurrency import run_in_threadpool

from aggregation.service.auth import SiloIdentity
from aggregation.service.db import transaction
from aggregation.service.engines.base import Answer, Hub
from aggregation.service.engines.context import require_running, round_context
from aggregation.service.engines.registry import engine_for
from aggregation.service.exceptions import ServiceError
from aggregation.service.statements import record_rejection


async def receive_answer(
    factory: sessionmaker[Session],
    hub: Hub,
    run_id: str,
    number: int,
    answer: Answer,
    *,
    lock_run: bool = False,
    lock_round: bool = False,
    record: type[ServiceError] | None = ServiceError,
) -> dict[str, object]:
    """`RoundEngine.receive` in one transaction (off the event loop). A refusal of the kind
    `record` is counted (`statements.record_rejection`: one counter row per run, round, silo
    and reason code, no ledger entry) before the error goes back."""

    def store() -> dict[str, object]:
        with transaction(factory) as s:
            ctx = round_context(s, hub, run_id, number, lock_run=lock_run, lock_round=lock_round)
            require_running(ctx, answer.silo)
            return engine_for(ctx.spec, ctx.rnd).receive(ctx, answer)

    try:
        return await run_in_threadpool(store)
    except ServiceError as exc:
        if record is not None and isinstance(exc, record):
            await run_in_threadpool(record_rejection, factory, run_id, number, answer.silo, exc)
        raise


async def submission(
    step: str,
    run_id: str,
    number: int,
    silo: SiloIdentity,
    factory: sessionmaker[Session],
    hub: Hub,
    response: Response,
    statement_signature: str | None,
    *,
    lock_round: bool = False,
) -> dict[str, object]:
    """A submission route's answer (update, trees, extension): the engine's result, 201 when
    stored now, 200 for a duplicate of a stored one. Updates do not lock the round (they
    arrive in parallel; each is a row of its own); a plugin's engine gets the round locked."""
    answer = Answer(silo.federation, silo.name, step, silo.body, {}, statement_signature)
    result = await receive_answer(factory, hub, run_id, number, answer, lock_round=lock_round)
    response.status_code = 200 if result.get("duplicate") else 201
    return result
