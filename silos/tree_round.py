"""A silo's part of a tree-model round (XGBoost, LightGBM): grow trees, seal them, submit.

Bagging and cyclic boost locally from the model the service names (the round's global model,
or in cyclic mode the chain so far); collective joins XGBoost's federated server as one worker
(mutual TLS with the federation's certificates from silo.toml). Every update is wrapped in the
envelope that binds it to run, round, silo and base model, then sealed: signed with the silo's
key and encrypted to the service's X25519 key, because trees cannot be securely aggregated.
"""

from __future__ import annotations

import hashlib
import logging
import time

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from schemas.sealed import seal
from schemas.tree_params import TreeSpec
from schemas.wire import Metrics, Task
from silos.client import SiloClient
from silos.collective_worker import (
    WorkerTLS,
    collect_worker,
    start_worker_process,
)
from silos.config import SiloConfig
from silos.exceptions import ModelError
from silos.lineage_copy import keep_receipt
from silos.local_data import LocalData
from silos.tree_trainer import TreeTrainResult, build_update, evaluate_trees, train_trees

log = logging.getLogger("fedsilo.silo")


def fetch_base(client: SiloClient, work: Task) -> bytes | None:
    """The model to grow from, checked against the sha256 the task named."""
    assert work.trees is not None
    base = client.tree_base(work.run_id, work.round)
    got = hashlib.sha256(base).hexdigest() if base else None
    if got != work.trees.base_model_sha256:
        raise ModelError(
            f"round {work.round}: the service handed out model {got or 'none'} but the task "
            f"named {work.trees.base_model_sha256 or 'none'}; refusing to train on it"
        )
    return base


def grow(
    client: SiloClient, work: Task, data: LocalData, config: SiloConfig
) -> tuple[bytes, Metrics | None, TreeTrainResult]:
    """Score the base model on the holdout, grow this round's trees; returns the envelope."""
    assert work.spec is not None and work.spec.trees is not None
    spec = work.spec.trees
    base = fetch_base(client, work)
    metrics = evaluate_trees(spec, base, data.X_test, data.y_test) if base else None
    seed = work.spec.training.seed + work.round
    if spec.mode == "collective":
        result = _join_collective(spec, work, data, config, base, seed)
    else:
        result = train_trees(spec, base, data.X_train, data.y_train, seed=seed)
    envelope = build_update(
        result,
        spec,
        run_id=work.run_id,
        round_num=work.round,
        silo=client.silo,
        global_model=base,
        metrics=metrics,
    )
    return envelope, metrics, result


def submit(client: SiloClient, work: Task, envelope: bytes, n_examples: int) -> dict[str, object]:
    """Seal the envelope to the service and send it with the signed statement naming it."""
    assert work.trees is not None
    sealed = seal(
        envelope,
        service_public=bytes.fromhex(work.trees.seal_key),
        silo_key=client.key,
        run_id=work.run_id,
        round_num=work.round,
        silo=client.silo,
    )
    digest = hashlib.sha256(envelope).hexdigest()
    return client.submit_trees(work.run_id, work.round, sealed, digest, n_examples)


def _join_collective(
    spec: TreeSpec,
    work: Task,
    data: LocalData,
    config: SiloConfig,
    base: bytes | None,
    seed: int,
) -> TreeTrainResult:
    assert work.trees is not None and work.trees.collective is not None
    info = work.trees.collective
    if config.collective is None:
        raise ModelError(f"silo {config.silo.name} has no [collective] certificates")
    tls = WorkerTLS(config.collective.ca, config.collective.cert, config.collective.key)
    started = time.perf_counter()
    process, results = start_worker_process(
        spec=spec,
        X=data.X_train,
        y=data.y_train,
        host=info.host,
        port=info.port,
        world_size=info.world_size,
        rank=info.rank,
        tls=tls,
        num_boost_round=spec.trees_per_round,
        seed=seed,  # run seed + round: the same at every worker, as the collective needs
        base_model=base,
    )
    deadline = work.spec.round_deadline_s if work.spec else 600.0
    model = collect_worker(process, results, timeout_s=deadline)
    import xgboost as xgb

    n_new = xgb.Booster(model_file=bytearray(model)).num_boosted_rounds()
    n_base = xgb.Booster(model_file=bytearray(base)).num_boosted_rounds() if base else 0
    return TreeTrainResult(
        model, n_new, n_base, len(data.y_train), time.perf_counter() - started, xgb.__version__
    )


def evaluate_version(client: SiloClient, work: Task, data: LocalData) -> Metrics:
    """An evaluation round of a tree run: the global model version on the local holdout."""
    assert work.spec is not None and work.spec.trees is not None
    model = client.download_model(work.run_id, work.model_version)
    if not model:
        raise ModelError(f"run {work.run_id} has no trees in model version {work.model_version}")
    return evaluate_trees(work.spec.trees, model, data.X_test, data.y_test)


@task(cache_policy=NO_CACHE, name="train-trees", task_run_name="round-{work.round}-trees")
def train_trees_round(
    client: SiloClient, work: Task, data: LocalData, config: SiloConfig
) -> dict[str, object]:
    """One tree round: score the base model, grow (or join the collective), seal, submit."""
    assert work.spec is not None and work.spec.trees is not None
    logger = get_run_logger()
    spec = work.spec.trees
    try:
        envelope, metrics, result = grow(client, work, data, config)
    except ModelError as exc:
        logger.warning("round %d: sitting out: %s", work.round, exc)
        client.sit_out(work.run_id, work.round, str(exc))
        return {"round": work.round, "sat_out": str(exc)}
    if metrics is not None:
        logger.info("round %d: current model on local holdout: %s", work.round, metrics)
    answer = submit(client, work, envelope, result.n_examples)
    keep_receipt(config.workspace, answer)
    logger.info(
        "round %d: %d new %s trees (%s) on %d rows in %.3fs; sealed update %s accepted",
        work.round,
        result.n_new_trees,
        spec.kind,
        spec.mode,
        result.n_examples,
        result.seconds,
        str(answer["digest"])[:16],
    )
    return {"round": work.round, "digest": answer["digest"], "train_seconds": result.seconds}
