"""A silo's part of a tree-model round (XGBoost, LightGBM): grow trees, seal them, submit.

Bagging and cyclic boost locally from the model the service names (the round's global model,
or in cyclic mode the chain so far); collective joins XGBoost's federated server as one worker
(mutual TLS with the federation's certificates from silo.toml). Every update is wrapped in the
envelope that binds it to run, round, silo and base model, then sealed: signed with the silo's
key and encrypted to the service's X25519 key, because trees cannot be securely aggregated.

A silo whose table is on Dask (`LocalData.dask`) boosts through XGBoost's and LightGBM's Dask
interfaces on its cluster (`silos.dask_boost`); the update is the same kind of native model.

Every update carries the contract's encoded feature names (`tree_trainer.name_features`),
whichever way it was grown, so the exported model refuses misnamed or reordered columns.
"""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import replace

from schemas.sealed import seal
from schemas.tasks import TreeEvaluateTask, TreeTrainTask
from schemas.tree_params import TreeSpec
from schemas.wire import Metrics
from silos.client import SiloClient
from silos.collective_worker import (
    WorkerTLS,
    collect_worker,
    start_worker_process,
)
from silos.config import SiloConfig
from silos.contract_store import contract_for
from silos.dask_table import DaskTable
from silos.exceptions import ModelError
from silos.features import FeaturePipeline
from silos.local_data import LocalData
from silos.tree_trainer import (
    TreeTrainResult,
    build_update,
    evaluate_trees,
    name_features,
    train_trees,
    unnamed,
)

log = logging.getLogger("fedsilo.silo")


def tree_spec(work: TreeTrainTask | TreeEvaluateTask) -> TreeSpec:
    """The run's tree spec (a tree task of a run without one cannot be served)."""
    if work.spec.trees is None:
        raise ModelError(f"round {work.round} of run {work.run_id} is a tree task without trees")
    return work.spec.trees


def fetch_base(client: SiloClient, work: TreeTrainTask) -> bytes | None:
    """The model to grow from, checked against the sha256 the task named."""
    base = client.tree_base(work.run_id, work.round)
    got = hashlib.sha256(base).hexdigest() if base else None
    if got != work.trees.base_model_sha256:
        raise ModelError(
            f"round {work.round}: the service handed out model {got or 'none'} but the task "
            f"named {work.trees.base_model_sha256 or 'none'}; refusing to train on it"
        )
    return base


def grow(
    client: SiloClient, work: TreeTrainTask, data: LocalData, config: SiloConfig
) -> tuple[bytes, Metrics | None, TreeTrainResult]:
    """Score the base model on the holdout, grow this round's trees; returns the envelope."""
    spec = tree_spec(work)
    base = fetch_base(client, work)
    metrics = evaluate_trees(spec, base, data.X_test, data.y_test) if base else None
    seed = work.spec.training.seed + work.round
    if data.dask is not None:
        result = _grow_on_dask(spec, work, data.dask, base, seed)
    elif spec.mode == "collective":
        result = _join_collective(spec, work, data, config, base, seed)
    else:
        result = train_trees(spec, base, data.X_train, data.y_train, seed=seed)
    # the names depend on the contract alone, so every silo's trees carry the same ones
    names = FeaturePipeline.from_contract(contract_for(config)).feature_names
    result = replace(result, model=name_features(spec, result.model, names))
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


def submit(
    client: SiloClient, work: TreeTrainTask, envelope: bytes, n_examples: int
) -> dict[str, object]:
    """Seal the envelope to the service and send it with the signed statement naming it."""
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


def _grow_on_dask(
    spec: TreeSpec, work: TreeTrainTask, table: DaskTable, base: bytes | None, seed: int
) -> TreeTrainResult:
    """This round's trees, boosted on the silo's Dask workers from the base model."""
    if spec.mode == "collective":
        raise ModelError(
            f"round {work.round}: this silo's table is on Dask ([compute]), and XGBoost's "
            "federated collective needs it in the agent's process; it serves bagging, cyclic "
            "and secure-hist runs"
        )
    from silos.dask_boost import encoded_frame, train_trees_dask

    client = table.client()
    with client.as_current():  # the encoding persists on this silo's cluster
        X, y = encoded_frame(table.partitions(), table.pipeline, table.path)
        return train_trees_dask(client, spec, base, X, y, seed=seed)


def _join_collective(
    spec: TreeSpec,
    work: TreeTrainTask,
    data: LocalData,
    config: SiloConfig,
    base: bytes | None,
    seed: int,
) -> TreeTrainResult:
    info = work.trees.collective
    if info is None:
        raise ModelError(f"round {work.round}: a collective round without its server address")
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
        base_model=unnamed(spec, base) if base else None,  # the worker's rows are unnamed
    )
    deadline = work.spec.round_deadline_s
    model = collect_worker(process, results, timeout_s=deadline)
    import xgboost as xgb

    n_new = xgb.Booster(model_file=bytearray(model)).num_boosted_rounds()
    n_base = xgb.Booster(model_file=bytearray(base)).num_boosted_rounds() if base else 0
    return TreeTrainResult(
        model, n_new, n_base, len(data.y_train), time.perf_counter() - started, xgb.__version__
    )


def evaluate_version(client: SiloClient, work: TreeEvaluateTask, data: LocalData) -> Metrics:
    """An evaluation round of a tree run: the global model version on the local holdout."""
    model = client.download_model(work.run_id, work.model_version)
    if not model:
        raise ModelError(f"run {work.run_id} has no trees in model version {work.model_version}")
    return evaluate_trees(tree_spec(work), model, data.X_test, data.y_test)
