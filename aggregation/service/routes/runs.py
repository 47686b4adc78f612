"""Coordinator endpoints for runs and rounds; each state change writes its ledger entry."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from aggregation.service import collective_rounds, lineage
from aggregation.service import rounds as round_crud
from aggregation.service import runs as run_crud
from aggregation.service.abandoned import coordinator_contact, coordinator_read, end_abandoned
from aggregation.service.closing import cancel_run, close_round
from aggregation.service.contracts import pin_run_contract, pinned_sha256
from aggregation.service.db import transaction
from aggregation.service.deps import (
    ADMIN_ERRORS,
    OCTET_BODY,
    AdminDep,
    FactoryDep,
    HubDep,
    Limit,
    ModelVersion,
    OptionalName,
    RecorderDep,
    RoundNumber,
    RunId,
    SettingsDep,
    Wait,
    errors,
    octet_stream,
    read_limited_body,
)
from aggregation.service.engines.base import AfterCommit, Hub
from aggregation.service.engines.context import round_context
from aggregation.service.engines.registry import check_mode, engine_for
from aggregation.service.exceptions import InvalidPayload, NotFound
from aggregation.service.model_store import record_model_saved
from aggregation.service.progress import round_view
from aggregation.service.routes.polling import long_poll
from aggregation.service.tables import Round
from aggregation.service.wakeup import silos_affected, wakeup_of
from schemas.wire import (
    RoundClose,
    RoundOpen,
    RoundOut,
    RunCancel,
    RunCreate,
    RunFinish,
    RunOut,
    RunStatistics,
)

router = APIRouter(
    prefix="/v1/runs", tags=["runs"], dependencies=[AdminDep], responses=ADMIN_ERRORS
)


@router.post("", status_code=201)
def create_run(body: RunCreate, factory: FactoryDep, settings: SettingsDep, hub: HubDep) -> RunOut:
    check_mode(body.spec)
    if body.spec.trees is not None and body.spec.trees.mode == "collective":
        collective_rounds.check_ready(settings)
    with transaction(factory) as s:
        # a run its coordinator abandoned holds its silos (abandoned.py): end it first, in a
        # transaction of its own (it stands even when this run is refused); its silos leave it
        # at their next poll, which the commit wakes
        end_abandoned(s, hub, federation=body.spec.federation)
    with transaction(factory) as s:
        spec = pin_run_contract(s, body.spec)  # 409 when its contract version is unpublished
        return run_crud.run_out(s, run_crud.create_run(s, spec, body.prefect_flow_run_id))


@router.get("")
def list_runs(
    factory: FactoryDep, hub: HubDep, federation: OptionalName = None, limit: Limit = 50
) -> list[RunOut]:
    with transaction(factory) as s:
        end_abandoned(s, hub, federation=federation)  # a coordinator looking for its run
        return [run_crud.run_out(s, r) for r in run_crud.list_runs(s, federation, limit)]


@router.get("/{run_id}")
def get_run(run_id: RunId, factory: FactoryDep, hub: HubDep) -> RunOut:
    with transaction(factory) as s:
        end_abandoned(s, hub, run_id=run_id)  # a coordinator that comes back finds it failed
        run = run_crud.get_run(s, run_id)
        coordinator_read(hub.settings, run)  # before round 1, its reads keep it alive
        return run_crud.run_out(s, run)


@router.get("/{run_id}/statistics", responses=errors(404))
def get_run_statistics(run_id: RunId, factory: FactoryDep) -> RunStatistics:
    """The run's federation statistics, as every task hands them to its silos: the coordinator
    encodes new rows with them (`fedsilo predict`). 404 when the run has none (yet)."""
    import json

    with transaction(factory) as s:
        run = run_crud.get_run(s, run_id)
        if not run.federation_stats:
            raise NotFound(f"run {run_id} has no federation statistics")
        return RunStatistics(run_id=run_id, statistics=json.loads(run.federation_stats))


@router.put("/{run_id}/models/0", status_code=201, responses=errors(413), openapi_extra=OCTET_BODY)
async def put_initial_model(
    run_id: RunId, request: Request, settings: SettingsDep
) -> dict[str, str]:
    payload = await read_limited_body(request, settings.max_body_bytes)
    factory = request.app.state.sessions

    def store() -> str:
        with transaction(factory) as s:
            return run_crud.put_initial_model(s, run_id, payload).sha256

    return {"sha256": await run_in_threadpool(store)}


@router.post("/{run_id}/start")
def start_run(run_id: RunId, factory: FactoryDep, recorder: RecorderDep) -> RunOut:
    with transaction(factory) as s:
        run, started = run_crud.start_run(s, run_id)
        out = run_crud.run_out(s, run)
        if started:
            spec = out.spec.model_dump(mode="json")
            initial = run_crud.get_model(s, run_id, 0)
            path = recorder.model_path(run_id, 0)
            recorder.service(
                s,
                "run_started",
                {
                    "spec": spec,
                    "config_sha256": lineage.config_sha256(spec),
                    "fedsilo_version": lineage.fedsilo_version(),
                    "git_commit": lineage.git_commit(),
                    "prefect_flow_run_id": run.prefect_flow_run_id,
                    "participants": out.participants,
                    "initial_model_sha256": initial.sha256,
                    "initial_model_path": path,
                    # the exact contract text the run trains under (None: unpinned)
                    "contract_sha256": pinned_sha256(s, out.spec),
                },
                run_id,
            )
            # the starting point is an artifact too: verify re-hashes its file like every other
            record_model_saved(s, recorder, run_id, 0, initial.payload, initial.sha256)
        return out


@router.post("/{run_id}/finish")
def finish_run(
    run_id: RunId, body: RunFinish, factory: FactoryDep, recorder: RecorderDep
) -> RunOut:
    with transaction(factory) as s:
        run, changed = run_crud.finish_run(s, run_id, body.status, body.reason)
        if changed:
            run_crud.record_run_end(s, recorder, run, body.status, body.reason)
        return run_crud.run_out(s, run)


@router.post("/{run_id}/cancel")
def cancel(run_id: RunId, body: RunCancel, factory: FactoryDep, hub: HubDep) -> RunOut:
    """Cancel the run (signed ``run_cancelled`` ledger entry); silos are told it ended.
    Cancelling a cancelled run returns it; a finished or failed one is a 409."""
    with transaction(factory) as s:
        run, number, _ = cancel_run(s, run_id, body.reason, hub)
        out = run_crud.run_out(s, run)
    if number is not None:
        collective_rounds.stop(run_id, number)
    return out


def _open(s: Session, hub: Hub, run_id: str, body: RoundOpen) -> tuple[Round, AfterCommit | None]:
    """Open a round and let its engine start it; returns the round and the engine's work
    for after the commit (if any)."""
    current = run_crud.get_run(s, run_id).current_round
    rnd = round_crud.open_round(s, run_id, body.round, body.kind, body.deadline_s)
    if rnd.number == current:  # opened again: a resumed coordinator rejoins it for a deadline
        coordinator_contact(rnd, body.deadline_s)
    after = None
    if rnd.status == "open":
        ctx = round_context(s, hub, run_id, rnd.number)
        after = engine_for(ctx.spec, rnd).start(ctx, body.deadline_s)
    return rnd, after


@router.post("/{run_id}/rounds", status_code=201)
def open_round(run_id: RunId, body: RoundOpen, factory: FactoryDep, hub: HubDep) -> RoundOut:
    """Open a round; its engine starts it (a retried request changes nothing)."""
    with transaction(factory) as s:
        rnd, after = _open(s, hub, run_id, body)
        out = round_view(s, rnd, hub)
    if after is None:
        return out
    after(factory)
    with transaction(factory) as s:
        return round_view(s, round_crud.get_round(s, run_id, body.round), hub)


@router.get("/{run_id}/rounds")
def list_rounds(run_id: RunId, factory: FactoryDep, hub: HubDep) -> list[RoundOut]:
    with transaction(factory) as s:
        return [round_view(s, r, hub) for r in round_crud.list_rounds(s, run_id)]


@router.get("/{run_id}/rounds/{number}")
async def get_round(
    run_id: RunId,
    number: RoundNumber,
    factory: FactoryDep,
    settings: SettingsDep,
    hub: HubDep,
    wait: Wait = 0,
) -> RoundOut:
    def check(final: bool) -> RoundOut | None:
        with transaction(factory) as s:
            rnd = round_crud.get_round(s, run_id, number)
            if not final and rnd.status == "open":
                # a secure round in progress is not done, whatever its silos sent: every
                # protocol message wakes this wait, and building the view is O(N) each time;
                # nor is a round that still waits for an answer (one query instead of the view)
                if rnd.secagg_stage is not None or round_crud.anyone_waiting(s, run_id, number):
                    return None
            out = round_view(s, rnd, hub)
        done = out.status != "open" or (out.complete and out.secagg_stage is None)
        return out if (final or done) else None

    wait_s = min(wait, settings.long_poll_max_s)
    result = await long_poll(
        lambda: check(False), wait_s, settings.poll_interval_s, wakeup_of(factory), answers=True
    )
    if result is None:
        result = await run_in_threadpool(check, True)
    assert result is not None
    return result


@router.post("/{run_id}/rounds/{number}/close")
def close(
    run_id: RunId,
    number: RoundNumber,
    factory: FactoryDep,
    hub: HubDep,
    body: RoundClose | None = None,
) -> RoundOut:
    """Aggregate a training round (or close an evaluation round) with what has arrived; with
    `then_open`, open the next round in the same transaction when this one ended and the run
    goes on (`opened_next` says so)."""
    then = body.then_open if body is not None else None
    if then is not None and then.round != number + 1:
        raise InvalidPayload(
            f"close of round {number} of run {run_id} may open round {number + 1}, "
            f"not round {then.round}"
        )
    after, opened = None, None
    with transaction(factory) as s:
        rnd = close_round(s, run_id, number, hub)
        if then is not None and _goes_on(s, rnd):
            _, after = _open(s, hub, run_id, then)
            silos_affected(s)  # the close alone would have woken only the coordinator
            opened = then.round
        out = round_view(s, rnd, hub)
    if out.status != "open":
        collective_rounds.stop(run_id, number)
    if after is not None:
        after(factory)
    return out.model_copy(update={"opened_next": opened}) if opened is not None else out


def _goes_on(s: Session, rnd: Round) -> bool:
    """`rnd` ended with a result and its run is still running at it: the next round may
    open (checked first, so a refused opening never undoes the close)."""
    if rnd.status not in ("aggregated", "closed"):
        return False
    run = run_crud.get_run(s, rnd.run_id)
    return run.status == "running" and run.current_round == rnd.number


@router.get(
    "/{run_id}/models/{version}/admin",
    response_class=Response,
    responses=octet_stream("the model (safetensors or native tree model)"),
)
def download_model_admin(run_id: RunId, version: ModelVersion, factory: FactoryDep) -> Response:
    with transaction(factory) as s:
        model = run_crud.get_model(s, run_id, version)
        return Response(
            model.payload,
            media_type="application/octet-stream",
            headers={"X-Fedsilo-Sha256": model.sha256},
        )
