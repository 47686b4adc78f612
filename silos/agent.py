"""The silo agent: a long-running process that only makes outbound calls.

It enrols its key, waits for the coordinator's approval, then long-polls the aggregation
service for work. The silo's part of each training run is one Prefect flow run with one task
per round step; the coordinator sends parameters (a `RunSpec`), never code: every line that
runs here is installed at the silo.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run

from schemas import tensors
from schemas.contracts.loader import load_contract
from schemas.specs import RunSpec, param_shapes
from schemas.wire import Metrics, MetricsReport, Task
from silos import hist_round, privacy, secure_round, tree_round
from silos.client import SiloClient
from silos.client_errors import ServiceRejected
from silos.config import SiloConfig, load_silo_config
from silos.features import FeaturePipeline
from silos.federated_stats import local_moments
from silos.keys import load_or_create_key
from silos.lineage_copy import keep_receipt
from silos.local_data import LocalData, local_train_table, prepare_local_data
from silos.policy import policy_violation
from silos.round_gate import check_round, statement_payload
from silos.tls_client import TlsFiles
from silos.trainer import evaluate, train_local

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
        except ServiceRejected as exc:
            if exc.status != 403:
                raise
    log.info("silo %s approved", client.silo)


def run_agent(config_path: str, *, max_runs: int | None = None) -> None:
    """Serve the federation until interrupted (or until `max_runs` runs were served)."""
    config = load_silo_config(config_path)
    client = make_client(config)
    wait_for_approval(client)
    served = 0
    while max_runs is None or served < max_runs:
        next_work = client.next_task(wait_s=POLL_WAIT_S)
        if next_work is None or next_work.type == "run_ended":
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


@task(
    cache_policy=NO_CACHE,
    name="federation-statistics",
    task_run_name="round-{work.round}-statistics",
)
def submit_statistics(client: SiloClient, work: Task, config: SiloConfig) -> None:
    """This silo's per-feature counts, sums and sums of squares, masked: the service learns
    only the federation's totals (from which every silo derives means and deviations)."""
    contract = load_contract(config.data.contract)
    train = local_train_table(config)
    moments = local_moments(train, contract)
    message = secure_round.masked_update(client, client.key, work, config.workspace, moments)
    try:
        answer = client.submit_masked(work.run_id, work.round, message, len(train), 0.0, None)
    except ServiceRejected as exc:
        if exc.status == 409 and "already answered" in exc.detail:
            return
        raise
    keep_receipt(config.workspace, answer)


def fetch_global_model(
    client: SiloClient, spec: RunSpec, run_id: str, version: int
) -> list[np.ndarray]:
    payload = client.download_model(run_id, version)
    params, _ = tensors.decode_expected(payload, param_shapes(spec.torch_model))
    return params


def encode_update(
    spec: RunSpec,
    work: Task,
    delta: list[np.ndarray],
    n_examples: int,
    seconds: float,
    metrics: Metrics,
) -> bytes:
    """The update payload: the delta plus metadata binding it to this run and round."""
    names = [n for n, _ in param_shapes(spec.torch_model)]
    return tensors.encode(
        dict(zip(names, delta, strict=True)),
        {
            "run_id": work.run_id,
            "round": str(work.round),
            "n_examples": str(n_examples),
            "train_seconds": f"{seconds:.6f}",
            "metrics": metrics.model_dump_json(),
            "prefect_flow_run_id": str(flow_run.get_id() or ""),
        },
    )


@task(cache_policy=NO_CACHE, name="train-round", task_run_name="round-{work.round}-train")
def train_round(
    client: SiloClient, work: Task, data: LocalData, config: SiloConfig
) -> dict[str, object]:
    """One training round: fetch the global model, score it on the holdout, train, submit.

    One Prefect task per round keeps Prefect's bookkeeping (~10 ms a task) out of the round's
    critical path; each step is logged inside it.
    """
    spec = work.spec
    assert spec is not None
    logger = get_run_logger()
    workspace = config.workspace
    params = fetch_global_model(client, spec, work.run_id, work.model_version)
    metrics = evaluate(spec.torch_model, params, data.X_test, data.y_test)
    logger.info("round %d: model v%d on local holdout: %s", work.round, work.model_version, metrics)
    if spec.privacy is not None:
        budget_problem = _privacy_budget_problem(config, work)
        if budget_problem:
            logger.warning("refusing run %s: %s", work.run_id, budget_problem)
            client.refuse(work.run_id, budget_problem)
            return {"round": work.round, "refused": budget_problem}
    mu = spec.strategy.mu if spec.strategy.name == "fedprox" else 0.0
    training = spec.training.model_copy(update={"seed": spec.training.seed + work.round})
    result = train_local(spec.torch_model, params, data.X_train, data.y_train, training, mu=mu)
    delta = [(new - old).astype(np.float32) for new, old in zip(result.params, params, strict=True)]
    if work.secagg is not None:
        answer = _submit_masked(
            client, work, workspace, delta, result.n_examples, result.seconds, metrics
        )
    else:
        payload = encode_update(spec, work, delta, result.n_examples, result.seconds, metrics)
        answer = client.submit_update(work.run_id, work.round, payload)
    keep_receipt(workspace, answer)
    if spec.privacy is not None and not answer.get("duplicate"):
        spent = privacy.epsilon_if(workspace, work.run_id, spec.privacy, 0)
        keep_receipt(
            workspace,
            client.submit_statement(
                work.run_id,
                "privacy_spent",
                {
                    "silo": client.silo,
                    "round": work.round,
                    "epsilon": spent,
                    "delta": spec.privacy.delta,
                    "noise_multiplier": spec.privacy.noise_multiplier,
                    "clip_norm": spec.privacy.clip_norm,
                },
            ),
        )
        logger.info(
            "round %d: epsilon spent so far %.3f at delta %g", work.round, spent, spec.privacy.delta
        )
    digest = answer["digest"]
    logger.info(
        "round %d: trained on %d rows in %.3fs; update %s accepted",
        work.round,
        result.n_examples,
        result.seconds,
        str(digest)[:16],
    )
    return {"round": work.round, "digest": digest, "train_seconds": result.seconds}


def _privacy_budget_problem(config: SiloConfig, work: Task) -> str | None:
    """Why this round would break the silo's DP budget (policy max_epsilon), or None."""
    config_max = config.policy.max_epsilon
    if config_max is None or work.spec is None or work.spec.privacy is None:
        return None
    after = privacy.epsilon_if(config.workspace, work.run_id, work.spec.privacy, 1)
    if after > config_max:
        return (
            f"round {work.round} would bring this silo's epsilon to {after:.2f} "
            f"(delta {work.spec.privacy.delta:g}); its policy allows at most {config_max:g}"
        )
    return None


def _submit_masked(
    client: SiloClient,
    work: Task,
    workspace: Path,
    delta: list[np.ndarray],
    n_examples: int,
    seconds: float,
    metrics: Metrics,
) -> dict[str, object]:
    """Clip, weight, quantize and mask the delta; the service only ever sees the sum."""
    assert work.secagg is not None and work.spec is not None
    flat = np.concatenate([d.ravel() for d in delta]).astype(np.float64)
    clipped = secure_round.clip_l2(flat, work.secagg.clip)
    if work.spec.privacy is not None:
        clipped = clipped + privacy.gaussian_noise(
            work.spec.privacy, len(work.secagg.roster), clipped.size
        )
        privacy.record_round(workspace, work.run_id, work.spec.privacy)
    weight = work.secagg.weight if work.secagg.weight is not None else 1.0
    message = secure_round.masked_update(client, client.key, work, workspace, weight * clipped)
    try:
        return client.submit_masked(
            work.run_id, work.round, message, n_examples, seconds, metrics.model_dump_json()
        )
    except ServiceRejected as exc:
        if exc.status == 409 and "already answered" in exc.detail:
            return {"digest": "(sent earlier)", "duplicate": True, "receipt": None}
        raise


@task(cache_policy=NO_CACHE, name="secagg-advertise", task_run_name="round-{work.round}-advertise")
def secagg_advertise(client: SiloClient, work: Task, data: LocalData, workspace: Path) -> None:
    secure_round.advertise(client, client.key, work, workspace, n_examples=len(data.y_train))


@task(cache_policy=NO_CACHE, name="secagg-share", task_run_name="round-{work.round}-share")
def secagg_share(client: SiloClient, work: Task, workspace: Path) -> None:
    secure_round.share(client, client.key, work, workspace)


@task(cache_policy=NO_CACHE, name="secagg-unmask", task_run_name="round-{work.round}-unmask")
def secagg_unmask(client: SiloClient, work: Task, workspace: Path) -> None:
    secure_round.unmask(client, client.key, work, workspace)


@task(cache_policy=NO_CACHE, name="evaluate-round", task_run_name="round-{work.round}-evaluate")
def evaluate_round(client: SiloClient, work: Task, data: LocalData) -> Metrics:
    """An evaluation round: score the final global model on the local holdout and report it."""
    spec = work.spec
    assert spec is not None
    if spec.trees is not None:
        metrics = tree_round.evaluate_version(client, work, data)
    else:
        params = fetch_global_model(client, spec, work.run_id, work.model_version)
        metrics = evaluate(spec.torch_model, params, data.X_test, data.y_test)
    report = MetricsReport(metrics=metrics, prefect_flow_run_id=str(flow_run.get_id() or ""))
    client.submit_evaluation(work.run_id, work.round, report)
    get_run_logger().info("final model v%d on local holdout: %s", work.model_version, metrics)
    return metrics


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


_FIRST_TASK_OF_ROUND = ("train", "evaluate", "secagg_advertise")


@flow(name="silo-training", flow_run_name="{run_id}", log_prints=True)
def silo_training(config_path: str, run_id: str) -> dict[str, object]:
    """This silo's part of one federated training run: every round until the run ends.

    Every round starts with the validation gate; the local data is (re)loaded only after it
    passed, and again whenever its fingerprint changes.
    """
    logger = get_run_logger()
    config = load_silo_config(config_path)
    client = make_client(config)
    n_features = FeaturePipeline.from_contract(load_contract(config.data.contract)).n_features
    data: LocalData | None = None
    rounds_done, gated_round = 0, 0
    checked = False
    while True:
        work = client.next_task(wait_s=POLL_WAIT_S, run_id=run_id)
        if work is None:
            continue
        if work.type == "run_ended":
            hist_round.forget(config.silo.name, run_id)
            logger.info(
                "run %s ended (%s) after %d rounds here", run_id, work.run_status, rounds_done
            )
            return {"run_id": run_id, "rounds": rounds_done, "run_status": work.run_status}
        assert work.spec is not None
        if not checked:
            reason = check_policy(config, work.spec, n_features)
            if reason:
                logger.warning("refusing run %s: %s", run_id, reason)
                client.refuse(run_id, reason)
                return {"run_id": run_id, "refused": reason}
            checked = True
        if (work.type in _FIRST_TASK_OF_ROUND or data is None) and work.round != gated_round:
            gated_round = work.round
            passed, fingerprint = validate_round(client, work, config)
            if not passed:
                continue
            if data is None or data.data_sha256 != fingerprint:
                data = load_local_data(config, work.stats)
        assert data is not None
        if data.stats != (tuple(work.stats) if work.stats else None):
            data = load_local_data(config, work.stats)  # the statistics round just finished
        if work.type == "evaluate":
            evaluate_round(client, work, data)
        elif work.type == "secagg_advertise":
            secagg_advertise(client, work, data, config.workspace)
        elif work.type == "secagg_share":
            secagg_share(client, work, config.workspace)
        elif work.type == "secagg_unmask":
            secagg_unmask(client, work, config.workspace)
        elif work.type == "statistics":
            submit_statistics(client, work, config)
        elif work.type in hist_round.TASK_TYPES:  # secure-hist: state kept in this process
            hist_round.hist_step(client, work, data, config)
        elif work.spec.trees is not None:
            tree_round.train_trees_round(client, work, data, config)
            rounds_done += 1
        else:
            train_round(client, work, data, config)
            rounds_done += 1
