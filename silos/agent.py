"""The silo agent: a long-running process that only makes outbound calls.

It enrols its key, waits for the coordinator's approval, warms up (validates and loads its data
once, then reports ready), then long-polls the aggregation service for work. The silo's part of
each training run is one Prefect flow run (named ``<silo>-<run id>``, tagged with federation,
silo, dataset, model and run) with one task run per round (``round-<n>``: the gate and every
step of that round, whose lines its logs hold); the coordinator sends parameters (a
`RunSpec`), never code: every line that runs here is installed at the silo. Each task goes to
the handler registered for its type (`silos.handlers`); plugin modules the operator lists add
handlers of their own.

A vertical run that names the silo as a party is served the same way, as one flow run
(silos/vertical/agent_flow.py). Any failure before the silo's update becomes a signed
decline (`silos.decline`): for the round (the silo sits it out and waits for the next) or for
the run (it leaves; its flow run ends Failed), and so does a round whose flow run cannot
even start (silo.toml no longer reads, the Prefect API fails). The flow run ends as the run
did: Completed, Failed or Cancelled. The client retries the service forever.

One agent serves a workspace (`silos.workspace_lock`, held for the process's life); a revoked
silo's agent stops (`SiloRevoked`).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from prefect import flow, get_run_logger, tags, task
from prefect.cache_policies import NO_CACHE
from prefect.client.schemas.objects import State
from prefect.settings import PREFECT_API_URL
from prefect.states import Cancelled, Completed, Failed
from prefect.utilities.annotations import quote

from schemas.specs import RunSpec
from schemas.tasks import RunEndedTask, Task, VerticalTask
from silos import (
    checkpoints,
    decline,
    flow_report,
    hist_round,
    ledger_sync,
    privacy_budget,
    secure_round,
    workspace_lock,
)
from silos import metrics as agent_metrics
from silos.agent_client import make_client
from silos.client import SiloClient
from silos.client_errors import ClientError, Forbidden, ServiceRejected
from silos.config import SiloConfig, load_silo_config
from silos.contract_store import bind_run, contract_for
from silos.dask_data import DASK_TASK_TYPES, prepare_run_data
from silos.decline import Declined, FailureLog
from silos.exceptions import DataError, FeatureError, SiloConfigError, SiloError, UnsupportedTask
from silos.features import FeaturePipeline
from silos.files import owner_only_umask
from silos.handlers import REGISTRY, SiloContext
from silos.handlers.plugins import load_plugins, plugin_names
from silos.handlers.registry import Registration
from silos.lineage_copy import keep_receipt
from silos.local_data import LocalData
from silos.policy import policy_violation
from silos.round_gate import RoundGate, check_round, statement_payload
from silos.stale_flow_runs import crash_left_behind
from silos.vertical.interrupted import end_interrupted
from silos.warmup import warm_up_and_report

log = logging.getLogger("fedsilo.silo")

POLL_WAIT_S = 25.0
REPEAT_WAIT_S = 2.0  # the service offers a task this silo already declined: do not spin


class SiloRevoked(SiloError):
    """The coordinator revoked this silo: the service refuses all it sends from now on."""


def wait_for_approval(client: SiloClient, poll_s: float = 1.0) -> None:
    """Enrol (idempotent) and block until the coordinator approves this silo."""
    status = client.enrol().status
    announced = False
    while status != "approved":
        if status == "revoked":
            raise SiloRevoked(
                f"silo {client.silo} has been revoked by the coordinator of {client.federation}; "
                "the agent does not start"
            )
        if not announced:
            log.info(
                "silo %s enrolled (key %s…); waiting for approval",
                client.silo,
                client.public_key_hex()[:16],
            )
            announced = True
        time.sleep(poll_s)
        try:
            status = client.whoami().status
        except Forbidden:
            pass  # enrolled, approval pending
    log.info("silo %s approved", client.silo)


def revoked(client: SiloClient, refusal: Forbidden) -> SiloRevoked | None:
    """The revocation behind a refusal (403), or None when the silo is still approved (a
    refusal for one run: not a participant, say). Asked of the service, not read from the
    refusal's text: enrolling again is idempotent and answers with the silo's status."""
    try:
        status = client.enrol().status
    except ServiceRejected:
        return None
    if status != "revoked":
        return None
    return SiloRevoked(
        f"silo {client.silo} has been revoked by the coordinator of {client.federation}: "
        f"the service refused its request ({refusal.detail}); the agent stops"
    )


def run_agent(config_path: str, *, max_runs: int | None = None) -> None:
    """Serve the federation until interrupted (or until `max_runs` runs were served).

    Everything the agent writes is its owner's only (umask 077); it refuses to start on a
    privacy budget file that fails its signature check or counts fewer rounds than the
    silo's privacy_spent statements in the service's ledger (`silos.ledger_sync`, which also
    gives its copy of its lineage back what it lacks), and on a workspace another agent
    holds (`silos.workspace_lock.WorkspaceBusy`; held until the process ends). It stops with
    `SiloRevoked` once the coordinator revoked the silo.
    """
    owner_only_umask()
    config = load_silo_config(config_path)
    with workspace_lock.held(config.workspace):
        privacy_budget.check(config)
        plugins = load_plugins(plugin_names(config.agent.plugins))
        if plugins:
            log.info(
                "silo %s: handler plugins %s (modes %s)",
                config.silo.name,
                plugins,
                REGISTRY.modes(),
            )
        client = make_client(config)
        if config.agent.metrics_port:  # Prometheus /metrics (silos/metrics.py)
            agent_metrics.serve_metrics(config.agent.metrics_port, config.agent.metrics_host)
        try:
            wait_for_approval(client)
            # a restored workspace or a lost answer: the copy and the budget against the ledger
            ledger_sync.reconcile(client, config)
            end_interrupted(client, config.workspace)  # vertical runs a kill cut short: peers stop
            warm_up_and_report(client, config)
            _serve(client, config, max_runs)
        except Forbidden as exc:  # refused at a poll: revoked, or it would not have been
            stop = revoked(client, exc)
            if stop is None:
                raise
            raise stop from exc


def _serve(client: SiloClient, config: SiloConfig, max_runs: int | None) -> None:
    """The agent's loop: each run this silo is offered, one flow run each."""
    served = 0
    left: set[str] = set()  # runs this silo declined: the service should not offer them again
    failures = FailureLog.new()
    while max_runs is None or served < max_runs:
        work = agent_metrics.timed_poll(client, wait_s=POLL_WAIT_S)
        if work is None or isinstance(work, RunEndedTask):
            continue
        if isinstance(work, VerticalTask):  # its party role, as a flow run of its own
            from silos.vertical.agent_flow import serve_vertical  # imported when first needed

            agent_metrics.run_ended(config.silo.name, serve_vertical(config, work).type.value)
            served += 1
            continue
        if work.run_id in left:
            if failures.first(work.round, f"left {work.run_id}"):
                log.warning(
                    "silo %s: run %s, which it declined, is offered again; ignoring it",
                    config.silo.name,
                    work.run_id,
                )
            time.sleep(REPEAT_WAIT_S)
            continue
        if failures.first(work.round, f"join {work.run_id}"):  # a retry of the round: once
            log.info(
                "silo %s: joining run %s at round %d", config.silo.name, work.run_id, work.round
            )
        try:
            state = silo_training(
                str(config.source), work.run_id, work.spec, work.coordinator_flow_run_id
            )
        except Declined as declined:  # its flow run could not start: the round goes on without it
            _decline_unstarted(client, config, work, declined, failures)
            time.sleep(REPEAT_WAIT_S)
        except Exception as exc:  # one run's failure here must not stop the agent: it keeps
            # serving, and rejoins this run at its next task if it goes on
            if isinstance(exc, Forbidden) and (stop := revoked(client, exc)) is not None:
                raise stop from exc
            if failures.first(work.round, f"{work.run_id}: {type(exc).__name__}: {exc}"):
                log.warning(
                    "silo %s: run %s failed here in round %d: %s: %s",
                    config.silo.name,
                    work.run_id,
                    work.round,
                    type(exc).__name__,
                    exc,
                )
            log.debug("silo %s: run %s failed here", config.silo.name, work.run_id, exc_info=True)
            time.sleep(REPEAT_WAIT_S)
        else:
            agent_metrics.run_ended(config.silo.name, state.type.value)
            if state.is_failed():
                left.add(work.run_id)
            log.info(
                "silo %s: its part of run %s ended %s: %s",
                config.silo.name,
                work.run_id,
                state.type.value,
                state.message or "no message",
            )
        served += 1


def _decline_unstarted(
    client: SiloClient, config: SiloConfig, work: Task, declined: Declined, failures: FailureLog
) -> None:
    """Decline the round whose flow run could not start (a silo.toml that no longer reads,
    an unreachable Prefect API): the service closes it without waiting for its deadline, and
    the agent tries again at the run's next round. Logged once per round."""
    if failures.first(work.round, f"{work.run_id}: {declined}"):
        log.warning(
            "silo %s: run %s, round %d: declining the round (%s), its flow run could not start: %s",
            config.silo.name,
            work.run_id,
            work.round,
            declined.cause,
            declined.reason,
        )
        log.debug("silo %s: why it could not start", config.silo.name, exc_info=declined)
    decline.send(client, config.workspace, work.run_id, work.round, declined)
    agent_metrics.declined(client.silo, declined.scope, declined.cause)


def silo_training(
    config_path: str, run_id: str, spec: RunSpec | None = None, coordinator: str | None = None
) -> State:
    """Serve one run as a Prefect flow run named ``<silo>-<run id>`` with the silo's tags.

    Returns the flow run's final state: Completed, Cancelled (the coordinator cancelled the
    run) or Failed (this silo declined the run, or the run failed). An error that ended the
    silo's part ends the flow run Failed and is raised here. When the flow run cannot start
    (silo.toml does not read, the Prefect API fails) this raises the round's `Declined`
    (cause ``internal``: the wire has no cause of its own for them) naming why. A flow run
    an earlier agent left Running for this run is marked Crashed first.
    """
    try:
        config = load_silo_config(config_path)
    except SiloConfigError as exc:  # edited while the agent runs: it rejoins once it reads
        raise Declined("round", "internal", str(exc)) from exc
    name = flow_report.flow_run_name(config.silo.name, run_id)
    try:  # the flow's own errors are in its state: what raises here is Prefect's
        crash_left_behind(name, f"silo:{config.silo.name}")
        with tags(*flow_report.flow_tags(config, run_id, spec, coordinator)):
            state = silo_run_flow.with_options(flow_run_name=name)(
                config_path=config_path, run_id=run_id, return_state=True
            )
    except Exception as exc:
        api = PREFECT_API_URL.value() or "Prefect's ephemeral server"
        raise Declined(
            "round",
            "internal",
            f"Prefect ({api}) could not run silo flow run {name}: {type(exc).__name__}: {exc}",
        ) from exc
    outcome = state.result(raise_on_failure=False)
    if isinstance(outcome, BaseException):
        raise outcome
    return state


@task(cache_policy=NO_CACHE, name="check-policy")
def check_policy(config: SiloConfig, spec: RunSpec, n_features: int, task: str) -> str | None:
    return policy_violation(config, spec, n_features, task)


@task(cache_policy=NO_CACHE, name="load-local-data")
def load_local_data(config: SiloConfig, stats: list[float] | None = None) -> LocalData | Declined:
    """The split and encoded table, or the round's decline when it cannot be (one class only,
    a value the contract cannot encode): returned, not raised, so that a table that stays
    broken costs one log line per round instead of a traceback."""
    try:
        data = prepare_run_data(config, stats)
    except (DataError, FeatureError) as exc:
        return Declined("round", "data", str(exc))
    get_run_logger().info(
        "silo %s: %d training rows, %d holdout rows; imputed per column: %s; %s",
        config.silo.name,
        data.n_train,
        len(data.y_test),
        data.imputed,
        "standardised with the federation's statistics" if stats else "contract-range scaling",
    )
    if data.dask is not None:
        get_run_logger().info(
            "silo %s: training table %s stays on Dask (%s)",
            config.silo.name,
            data.dask.path.name,
            config.compute.dask_scheduler or "a LocalCluster on this machine",
        )
    return data


def validate_round(client: SiloClient, work: Task, config: SiloConfig) -> RoundGate:
    """The gate: fingerprint and validate the table and tell the service (signed)."""
    logger = get_run_logger()
    gate = check_round(config)
    summary = gate.summary
    payload = statement_payload(client.silo, work.round, summary)
    if summary.success:  # rides on the round's first answer (`SiloClient.carry_statement`)
        answer = client.carry_statement(work.run_id, "validation_result", payload)
    else:  # the round's decline follows; the verdict it cites goes first, alone
        answer = client.submit_statement(work.run_id, "validation_result", payload)
    if answer is not None:
        keep_receipt(config.workspace, answer)
    flow_report.validation_artifact(client.silo, work.run_id, work.round, summary)
    docs = f"; data docs: {gate.data_docs}" if gate.data_docs else ""
    if summary.success:
        logger.info(
            "round %d: data %s… passed contract %s v%s (%d expectations%s)%s",
            work.round,
            summary.data_sha256[:12],
            summary.contract,
            summary.contract_version,
            summary.n_expectations,
            ", unchanged since last check" if gate.reused else "",
            docs,
        )
    return gate


@dataclass
class _RunProgress:
    """The flow's memory of one run at this silo (the rest is in the workspace)."""

    run_id: str
    config: SiloConfig | None = None  # bound to the run's accepted contract version
    data: LocalData | None = None
    rounds_done: int = 0
    gated_round: int = 0
    declined_round: int = 0
    metrics: list[dict[str, Any]] = field(default_factory=list)
    failures: FailureLog = field(default_factory=FailureLog.new)
    outbox: checkpoints.Outbox = field(default_factory=checkpoints.Outbox)


def _refuse_run(
    client: SiloClient, config: SiloConfig, progress: _RunProgress, work: Task
) -> SiloConfig:
    """Raise the run's decline when this silo cannot take part (a contract version its
    operator has not accepted, its policy: checked once at the run's first round task; a task it
    has no handler for). Returns the config bound to the run's contract version."""
    if progress.config is None and not isinstance(work, RunEndedTask | VerticalTask):
        bound = bind_run(client, config, work.spec.contract_version)
        try:
            contract = contract_for(bound)
            n_features = FeaturePipeline.from_contract(contract).n_features
        except Exception as exc:  # declined with the reason, at the run's first task
            raise Declined("run", "contract", f"{type(exc).__name__}: {exc}") from exc
        reason = check_policy(bound, work.spec, n_features, contract.task)
        if reason:
            raise Declined("run", "policy", reason)
        progress.config = bound
    try:
        REGISTRY.lookup(work)
    except UnsupportedTask as exc:
        raise Declined("run", "internal", str(exc)) from exc
    return progress.config or config


def _loaded(config: SiloConfig, stats: list[float] | None) -> LocalData:
    data = load_local_data(config, stats)
    if isinstance(data, Declined):
        raise data
    return data


def _ready_data(
    client: SiloClient,
    config: SiloConfig,
    progress: _RunProgress,
    work: Task,
    entry: Registration,
) -> LocalData | None:
    """The validation gate at a round's first task, then the data, (re)loaded when its
    fingerprint or the federation's statistics changed. Raises `Declined` (cause data) when
    the table failed the gate or cannot be split or encoded."""
    stats = None if isinstance(work, RunEndedTask | VerticalTask) else work.stats
    if (entry.opens_round or progress.data is None) and work.round != progress.gated_round:
        progress.gated_round = work.round
        gate = validate_round(client, work, config)
        if not gate.summary.success:
            docs = f" (data docs: {gate.data_docs})" if gate.data_docs else ""
            raise Declined("round", "data", gate.summary.reason() + docs)
        if progress.data is None or progress.data.fingerprints != gate.summary.fingerprints:
            progress.data = _loaded(config, stats)
    if progress.data is None:
        raise Declined("round", "data", f"no validated data for round {work.round} yet")
    if progress.data.stats != (tuple(stats) if stats else None):
        progress.data = _loaded(config, stats)  # the statistics round just finished
    return progress.data


def _step(client: SiloClient, config: SiloConfig, progress: _RunProgress, work: Task) -> None:
    """One task: the run's checks, the round's gate and data, then its handler."""
    config = _refuse_run(client, config, progress, work)
    entry = REGISTRY.lookup(work)
    _work(client, config, progress, work, entry)


def _work(
    client: SiloClient, config: SiloConfig, progress: _RunProgress, work: Task, entry: Registration
) -> None:
    """The round's gate and data, then the task's handler."""
    data = _ready_data(client, config, progress, work, entry)
    if data is None:
        return
    if data.dask is not None and entry.name not in DASK_TASK_TYPES:
        raise Declined(
            "run",
            "data",
            f"this silo's table is on Dask ([compute]); {entry.name} tasks need it in memory "
            f"(a Dask silo serves {', '.join(sorted(DASK_TASK_TYPES))})",
        )
    started = time.monotonic()
    try:
        result = REGISTRY.dispatch(SiloContext(client, config, data), work)
    except Exception:  # this silo's part of the round ends here: its round secrets go too
        secure_round.erase_run_state(config.workspace, work.run_id)
        raise
    if isinstance(result, Declined):  # the handler's own decline (privacy budget, say)
        secure_round.erase_run_state(config.workspace, work.run_id)
        raise result
    progress.rounds_done += int(entry.trains)
    if entry.trains:
        agent_metrics.round_served(client.silo, time.monotonic() - started)
    row = flow_report.metrics_row(work.round, result)
    if row is not None:
        progress.metrics.append(row)
        flow_report.metrics_artifact(client.silo, work.run_id, progress.metrics)


def _decline(
    client: SiloClient, config: SiloConfig, progress: _RunProgress, work: Task, exc: Exception
) -> Declined:
    """Send the decline `exc` amounts to; logged once per round (traceback at debug)."""
    declined = decline.declined_for(exc)
    if progress.failures.first(work.round, str(declined)):
        decline.log_decline(get_run_logger(), work.round, declined, exc)
    held = decline.send(client, config.workspace, work.run_id, work.round, declined)
    agent_metrics.declined(client.silo, declined.scope, declined.cause)
    # a refused decline names a round that is not open (a restored hub is back at an earlier
    # one): the round's task must be taken up again when it opens
    progress.declined_round = work.round if held else 0
    return declined


@flow(name="silo-training", log_prints=True)
def silo_run_flow(config_path: str, run_id: str) -> State:
    """This silo's part of one federated training run: every round until the run ends.

    Every round starts with the validation gate; the local data is (re)loaded only after it
    passed, and again whenever its fingerprint changes. Each task goes to its handler; any
    failure before the update is declined (`silos.decline`), the round's or the run's.
    """
    config = load_silo_config(config_path)
    load_plugins(plugin_names(config.agent.plugins))
    client = make_client(config)
    client.on_receipt = partial(keep_receipt, config.workspace)  # of statements that rode along
    client.follow_wait_s = POLL_WAIT_S  # an answer (a message, an update) brings the next task
    progress = _RunProgress(run_id)
    stopping = False
    try:
        with flow_report.untagged_task_runs():
            return _serve_run(client, config, progress, run_id)
    except BaseException as exc:
        stopping = not isinstance(exc, Exception)  # SIGTERM or Ctrl+C: the process stops
        raise
    finally:
        if stopping:  # one try each: a stop must not wait out the service's outage
            client.retry_for_s = 0
        try:
            client.flush_held()  # a statement no POST took (the run ended first) goes alone
            checkpoints.flush(client, progress.outbox)  # a declined or failed run's too
        except ClientError as exc:
            if not stopping:
                raise
            log.warning("silo %s: stopping; not sent to the service: %s", client.silo, exc)
        flow_report.drain()  # the flow run ends with its artifacts sent


def _next_task(client: SiloClient, config: SiloConfig, progress: _RunProgress) -> Task:
    """The run's next task, long-polled until there is one; the polls carry this silo's
    countersignatures of ledger checkpoints (`checkpoints.poll`)."""
    while True:
        work = checkpoints.poll(
            client, config.workspace, progress.outbox, wait_s=POLL_WAIT_S, run_id=progress.run_id
        )
        if work is not None:
            return work


# One task run per round, not per step: each task run costs Prefect's server about 30 ms of
# CPU (three state events), and a secure round had five per silo, so the server fell further
# behind every round and took a share of the cores the round needed (bench/round_overhead.py;
# bench/README.md, "one task run per round").
@task(cache_policy=NO_CACHE, name="round", task_run_name="round-{number}")
def serve_round(
    client: SiloClient, config: SiloConfig, progress: _RunProgress, work: Task, number: int
) -> Task:
    """This silo's part of round `number`: `work` and every later task of the same round.
    Returns the run's first task of another round (or its end) for the flow's loop. A step's
    error ends the task run Failed and goes to the loop, which declines the round; a decline
    (`Declined`: a table that failed the gate, say) is returned as the Failed state, so a
    round declined every round costs one log line, not a traceback each time."""
    try:
        while True:
            _step(client, config, progress, work)
            work = _next_task(client, config, progress)
            if isinstance(work, RunEndedTask) or work.round != number:
                return work
    except Declined as exc:
        return Failed(message=f"round {number} declined: {exc}", data=exc)  # type: ignore[return-value]


def _serve_run(
    client: SiloClient, config: SiloConfig, progress: _RunProgress, run_id: str
) -> State:
    """The flow's loop: each round of the run until it ends, or this silo declines the run."""
    work: Task | None = None
    while True:
        if work is None:
            work = _next_task(client, config, progress)
        if isinstance(work, RunEndedTask):
            return _run_ended(client, config, progress, work)
        if work.round == progress.declined_round:  # the service has not moved on yet
            time.sleep(REPEAT_WAIT_S)
            work = None
            continue
        progress.declined_round = 0  # another round: one this silo declined may open again
        current, work = work, None
        try:  # quote: Prefect need not walk the data and metrics to find task inputs
            state = serve_round(  # type: ignore[call-overload]  # Prefect unwraps quote()
                quote(client),
                quote(config),
                quote(progress),
                quote(current),
                current.round,
                return_state=True,
            )
            outcome = state.result(raise_on_failure=False)
            if isinstance(outcome, Exception):
                raise outcome
            work = outcome
        except Exception as exc:  # every failure before the update is declined
            declined = _decline(client, config, progress, current, exc)  # the failed round's
            if declined.scope == "run":
                secure_round.erase_run_state(config.workspace, run_id)
                return Failed(
                    message=f"silo {client.silo} declined run {run_id} in round {current.round} "
                    f"({declined.cause}): {declined.reason}",
                    data={"run_id": run_id, "declined": declined.cause},
                )


def _run_ended(
    client: SiloClient, config: SiloConfig, progress: _RunProgress, work: RunEndedTask
) -> State:
    """The run ended at the service: drop its secrets, countersign, and end the flow run as
    the run ended: Completed when it finished, Cancelled when the coordinator cancelled it,
    Failed when it failed or went on without this silo. The task names only the run's
    status, not the reason it failed: that is the coordinator's to show."""
    run_id = work.run_id
    hist_round.forget(config.silo.name, run_id)
    secure_round.erase_run_state(config.workspace, run_id)
    checkpoints.flush(client, progress.outbox)  # the run's end: its checkpoint came with it
    checkpoints.keep_countersigned(client, config.workspace)  # and any a task did not bring
    get_run_logger().info(
        "run %s ended (%s) after %d rounds here", run_id, work.run_status, progress.rounds_done
    )
    result: dict[str, object] = {
        "run_id": run_id,
        "rounds": progress.rounds_done,
        "run_status": work.run_status,
    }
    done = f"silo {client.silo} served {progress.rounds_done} rounds of it"
    if work.run_status == "finished":
        return Completed(message=f"run {run_id} finished; {done}", data=result)
    if work.run_status == "cancelled":
        return Cancelled(
            message=f"run {run_id} was cancelled by its coordinator; {done}", data=result
        )
    if work.run_status == "failed":
        why = "`fedsilo runs show` on the coordinator's side says why"
        return Failed(message=f"run {run_id} failed at the service ({why}); {done}", data=result)
    # the run goes on without this silo: the service dropped it (it left a secure-hist
    # session, say)
    return Failed(
        message=f"run {run_id} ({work.run_status}) goes on without silo {client.silo}: the "
        f"service no longer counts it a participant; {done}",
        data=result,
    )
