"""The silo agent: a long-running process that only makes outbound calls.

It enrols its key, waits for the coordinator's approval, then long-polls the aggregation
service for work. The silo's part of each training run is one Prefect flow run with one task
per round step; the coordinator sends parameters (a `RunSpec`), never code: every line that
runs here is installed at the silo. Each task goes to the handler registered for its type
(`silos.handlers`); plugin modules the operator lists add handlers of their own.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from schemas.contracts.loader import load_contract
from schemas.specs import RunSpec
from schemas.tasks import RunEndedTask, Task
from silos import checkpoints, hist_round, privacy_budget, secure_round
from silos.client import SiloClient
from silos.client_errors import Forbidden
from silos.config import SiloConfig, load_silo_config
from silos.exceptions import UnsupportedTask
from silos.features import FeaturePipeline
from silos.files import owner_only_umask
from silos.handlers import REGISTRY, SiloContext
from silos.handlers.plugins import load_plugins, plugin_names
from silos.handlers.registry import Registration
from silos.keys import load_or_create_key
from silos.lineage_copy import keep_receipt
from silos.local_data import LocalData, prepare_local_data
from silos.policy import policy_violation
from silos.round_gate import check_round, statement_payload
from silos.tls_client import TlsFiles

log = logging.getLogger("fedsilo.silo")

POLL_WAIT_S = 25.0


def make_client(config: SiloConfig, retry_for_s: float = 600.0) -> SiloClient:
    key = load_or_create_key(config.key_path)
    return SiloClient(
        config.service.urls,
        federation=config.silo.federation,
        silo=config.silo.name,
        key=key,
        retry_for_s=retry_for_s,
        tls=TlsFiles(config.tls.ca, config.tls.cert, config.tls.key) if config.tls else None,
    )


def wait_for_approval(client: SiloClient, poll_s: float = 1.0) -> None:
    """Enrol (idempotent) and block until the coordinator approves this silo."""
    status = client.enrol().status
    announced = False
    while status != "approved":
        if status == "revoked":
            raise PermissionError(f"silo {client.silo} has been revoked by the coordinator")
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


def run_agent(config_path: str, *, max_runs: int | None = None) -> None:
    """Serve the federation until interrupted (or until `max_runs` runs were served).

    Everything the agent writes is its owner's only (umask 077); it refuses to start on a
    privacy budget file that fails its signature check.
    """
    owner_only_umask()
    config = load_silo_config(config_path)
    privacy_budget.check(config)
    plugins = load_plugins(plugin_names(config.agent.plugins))
    if plugins:
        log.info(
            "silo %s: handler plugins %s (modes %s)", config.silo.name, plugins, REGISTRY.modes()
        )
    client = make_client(config)
    wait_for_approval(client)
    served = 0
    while max_runs is None or served < max_runs:
        next_work = client.next_task(wait_s=POLL_WAIT_S)
        if next_work is None or isinstance(next_work, RunEndedTask):
            continue
        log.info(
            "silo %s: joining run %s at round %d",
            config.silo.name,
            next_work.run_id,
            next_work.round,
        )
        try:
            silo_training(config_path=str(config.source), run_id=next_work.run_id)
        except Exception:  # one run's failure here (a late answer refused, say) must not stop
            # the agent: it keeps serving, and rejoins this run at its next task if it goes on
            log.exception("silo %s: run %s failed here", config.silo.name, next_work.run_id)
            time.sleep(1.0)
        served += 1


@task(cache_policy=NO_CACHE, name="check-policy")
def check_policy(config: SiloConfig, spec: RunSpec, n_features: int) -> str | None:
    return policy_violation(config, spec, n_features)


@task(cache_policy=NO_CACHE, name="load-local-data")
def load_local_data(config: SiloConfig, stats: list[float] | None = None) -> LocalData:
    data = prepare_local_data(config, stats)
    get_run_logger().info(
        "silo %s: %d training rows, %d holdout rows; imputed per column: %s; %s",
        config.silo.name,
        len(data.y_train),
        len(data.y_test),
        data.imputed,
        "standardised with the federation's statistics" if stats else "contract-range scaling",
    )
    return data


@task(cache_policy=NO_CACHE, name="validate-data", task_run_name="round-{work.round}-validate")
def validate_round(client: SiloClient, work: Task, config: SiloConfig) -> tuple[bool, str]:
    """The gate: fingerprint and validate the table, tell the service, sit out on failure.

    Returns (passed, data_sha256).
    """
    logger = get_run_logger()
    gate = check_round(config)
    summary = gate.summary
    answer = client.submit_statement(
        work.run_id, "validation_result", statement_payload(client.silo, work.round, summary)
    )
    keep_receipt(config.workspace, answer)
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
        return True, summary.data_sha256
    logger.warning("round %d: sitting out: %s%s", work.round, summary.reason(), docs)
    client.sit_out(work.run_id, work.round, summary.reason())
    return False, summary.data_sha256


@dataclass
class _RunProgress:
    """The flow's memory of one run at this silo (the rest is in the workspace)."""

    run_id: str
    n_features: int
    data: LocalData | None = None
    rounds_done: int = 0
    gated_round: int = 0
    checked: bool = False


def _refusal(config: SiloConfig, progress: _RunProgress, work: Task) -> str | None:
    """Why this silo refuses the run (its policy, checked once; a task it has no handler
    for), or None. The policy sees the run's spec at its first round task."""
    if not progress.checked and not isinstance(work, RunEndedTask):
        reason = check_policy(config, work.spec, progress.n_features)
        if reason:
            return reason
        progress.checked = True
    try:
        REGISTRY.lookup(work)
    except UnsupportedTask as exc:
        return str(exc)
    return None


def _ready_data(
    client: SiloClient,
    config: SiloConfig,
    progress: _RunProgress,
    work: Task,
    entry: Registration,
) -> LocalData | None:
    """The validation gate at a round's first task, then the data, (re)loaded when its
    fingerprint or the federation's statistics changed; None: the silo sits this round out."""
    stats = None if isinstance(work, RunEndedTask) else work.stats
    if (entry.opens_round or progress.data is None) and work.round != progress.gated_round:
        progress.gated_round = work.round
        passed, fingerprint = validate_round(client, work, config)
        if not passed:
            return None
        if progress.data is None or progress.data.data_sha256 != fingerprint:
            progress.data = load_local_data(config, stats)
    if progress.data is None:
        return None  # sat this round out earlier: wait for the next one
    if progress.data.stats != (tuple(stats) if stats else None):
        progress.data = load_local_data(config, stats)  # the statistics round just finished
    return progress.data


@flow(name="silo-training", flow_run_name="{run_id}", log_prints=True)
def silo_training(config_path: str, run_id: str) -> dict[str, object]:
    """This silo's part of one federated training run: every round until the run ends.

    Every round starts with the validation gate; the local data is (re)loaded only after it
    passed, and again whenever its fingerprint changes. Each task goes to its handler.
    """
    logger = get_run_logger()
    config = load_silo_config(config_path)
    load_plugins(plugin_names(config.agent.plugins))
    client = make_client(config)
    contract = load_contract(config.data.contract)
    progress = _RunProgress(run_id, FeaturePipeline.from_contract(contract).n_features)
    while True:
        work = client.next_task(wait_s=POLL_WAIT_S, run_id=run_id)
        if work is None:
            continue
        if isinstance(work, RunEndedTask):
            hist_round.forget(config.silo.name, run_id)
            secure_round.erase_run_state(config.workspace, run_id)
            checkpoints.keep_countersigned(client, config.workspace)  # the run's end
            logger.info(
                "run %s ended (%s) after %d rounds here",
                run_id,
                work.run_status,
                progress.rounds_done,
            )
            return {"run_id": run_id, "rounds": progress.rounds_done, "run_status": work.run_status}
        reason = _refusal(config, progress, work)
        if reason:
            logger.warning("refusing run %s: %s", run_id, reason)
            client.refuse(run_id, reason)
            return {"run_id": run_id, "refused": reason}
        entry = REGISTRY.lookup(work)
        if entry.opens_round:  # the previous round closed: countersign its checkpoint
            checkpoints.keep_countersigned(client, config.workspace)
        data = _ready_data(client, config, progress, work, entry)
        if data is None:
            continue
        try:
            REGISTRY.dispatch(SiloContext(client, config, data), work)
        except Exception:  # this silo's part of the run ends here: its round secrets go too
            secure_round.erase_run_state(config.workspace, run_id)
            raise
        progress.rounds_done += int(entry.trains)
