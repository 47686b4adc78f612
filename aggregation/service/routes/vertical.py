"""Vertical runs: the coordinator creates and watches them; their parties (silos) swap
X25519 keys, post sealed envelopes to each other and long-poll their own inbox, and report
progress for the ledger. The service relays ciphertext only (aggregation/service/vertical_relay.py)
and keeps it only until it is read, or the run ends (unless `vertical_keep_envelopes`).
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Response
from starlette.concurrency import run_in_threadpool

from aggregation.service import vertical_relay as relay
from aggregation.service.db import transaction
from aggregation.service.deps import (
    ADMIN_ERRORS,
    OCTET_BODY,
    SILO_ERRORS,
    AdminDep,
    FactoryDep,
    Limit,
    OptionalName,
    RecorderDep,
    RunId,
    SettingsDep,
    SiloDep,
    Wait,
    octet_stream,
)
from aggregation.service.exceptions import InvalidPayload
from aggregation.service.routes.polling import long_poll
from aggregation.service.wakeup import wakeup_of
from schemas.frames import pack_frames
from schemas.vertical import VerticalEvent, VerticalRunCreate, VerticalRunOut
from schemas.wire import INT32_MAX, OCTET_STREAM, RunCancel

admin = APIRouter(
    prefix="/v1/vertical/runs", tags=["vertical"], dependencies=[AdminDep], responses=ADMIN_ERRORS
)
silo_router = APIRouter(
    prefix="/v1/silo/vertical/{run_id}", tags=["vertical"], responses=SILO_ERRORS
)
After = Annotated[int, Query(ge=0, le=INT32_MAX, description="the last envelope id read")]
LAST_HEADER = "X-Fedsilo-Vertical-Last"
STATUS_HEADER = "X-Fedsilo-Vertical-Status"
INBOX_LIMIT = 256


@admin.post("", status_code=201)
def create(body: VerticalRunCreate, factory: FactoryDep, recorder: RecorderDep) -> VerticalRunOut:
    with transaction(factory) as s:
        return relay.out(relay.create(s, recorder, body))


@admin.get("")
def list_runs(
    factory: FactoryDep, federation: OptionalName = None, limit: Limit = 50
) -> list[VerticalRunOut]:
    """The newest vertical runs first (`fedsilo runs list` shows them beside the others)."""
    with transaction(factory) as s:
        return [relay.out(r) for r in relay.list_runs(s, federation, limit)]


@admin.get("/{run_id}")
def show(run_id: RunId, factory: FactoryDep) -> VerticalRunOut:
    with transaction(factory) as s:
        return relay.out(relay.get(s, run_id))


@admin.post("/{run_id}/cancel")
def cancel(
    run_id: RunId,
    body: RunCancel,
    factory: FactoryDep,
    recorder: RecorderDep,
    settings: SettingsDep,
) -> VerticalRunOut:
    """End a running vertical run as failed, with the coordinator's reason (its parties stop
    at their next poll); a run already over is a 409."""
    with transaction(factory) as s:
        run = relay.get(s, run_id, for_update=True)
        relay.cancel(s, recorder, run, body.reason)
        if not settings.vertical_keep_envelopes:
            relay.drop_envelopes(s, run.id)
        return relay.out(run)


@silo_router.get("")
def show_own(run_id: RunId, silo: SiloDep, factory: FactoryDep) -> VerticalRunOut:
    """The run as its party sees it (its parties and status)."""
    with transaction(factory) as s:
        return relay.out(relay.party_of(s, run_id, silo.federation, silo.name))


@silo_router.put("/key", openapi_extra=OCTET_BODY)
def put_key(run_id: RunId, silo: SiloDep, factory: FactoryDep) -> dict[str, str]:
    """This party's X25519 public key for the run (32 raw bytes); refused once it ended."""
    with transaction(factory) as s:
        run = relay.party_of(s, run_id, silo.federation, silo.name, for_update=True)
        relay.put_key(s, run, silo.name, silo.body)
        return relay.keys(s, run)


@silo_router.get("/keys")
def get_keys(run_id: RunId, silo: SiloDep, factory: FactoryDep) -> dict[str, str]:
    """The X25519 public keys the parties gave so far (hex)."""
    with transaction(factory) as s:
        return relay.keys(s, relay.party_of(s, run_id, silo.federation, silo.name))


@silo_router.post("/envelopes", openapi_extra=OCTET_BODY)
def post_envelope(run_id: RunId, silo: SiloDep, factory: FactoryDep) -> dict[str, int]:
    with transaction(factory) as s:
        run = relay.party_of(s, run_id, silo.federation, silo.name)
        return {"id": relay.post(s, run, silo.name, silo.body)}


@silo_router.get(
    "/inbox",
    response_class=Response,
    responses={**octet_stream("envelopes for this party, as frames"), 204: {"description": "none"}},
)
async def inbox(
    run_id: RunId,
    silo: SiloDep,
    factory: FactoryDep,
    settings: SettingsDep,
    after: After = 0,
    wait: Wait = 0.0,
) -> Response:
    """Envelopes addressed to this party past id `after`, waiting up to `wait` seconds for
    one; headers carry the last id and the run's status (a party stops when it is over).
    Naming `after` acknowledges the envelopes up to it: the service deletes them."""
    status = ["running"]
    if after and not settings.vertical_keep_envelopes:  # what it read is delivered: drop it

        def acknowledge() -> None:
            with transaction(factory) as s:
                relay.acknowledge(
                    s, relay.party_of(s, run_id, silo.federation, silo.name), silo.name, after
                )

        await run_in_threadpool(acknowledge)

    def check() -> list[tuple[int, bytes]] | None:
        with transaction(factory) as s:
            run = relay.party_of(s, run_id, silo.federation, silo.name)
            status[0] = run.status
            got = relay.inbox(s, run, silo.name, after, INBOX_LIMIT)
        return got or (None if run.status == "running" else [])

    got = await long_poll(
        check, min(wait, settings.long_poll_max_s), settings.poll_interval_s, wakeup_of(factory)
    )
    headers = {STATUS_HEADER: status[0], LAST_HEADER: str(got[-1][0] if got else after)}
    if not got:
        return Response(status_code=204, headers=headers)
    return Response(pack_frames([f for _, f in got]), media_type=OCTET_STREAM, headers=headers)


@silo_router.post("/events")
async def event(
    run_id: RunId,
    silo: SiloDep,
    factory: FactoryDep,
    recorder: RecorderDep,
    settings: SettingsDep,
) -> VerticalRunOut:
    """A party's progress for the ledger: intersection, a tree's lineage, the end, a failure."""
    try:
        body = VerticalEvent.model_validate_json(silo.body)
    except ValueError as exc:
        raise InvalidPayload(f"vertical event from silo {silo.name!r}: {exc}") from exc

    def store() -> VerticalRunOut:
        with transaction(factory) as s:
            run = relay.party_of(s, run_id, silo.federation, silo.name, for_update=True)
            relay.record(s, recorder, run, silo.name, body)
            if run.status != "running" and not settings.vertical_keep_envelopes:
                relay.drop_envelopes(s, run.id)  # the run is over: nobody reads them any more
            return relay.out(run)

    return await run_in_threadpool(store)
