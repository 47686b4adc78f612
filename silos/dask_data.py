"""A Dask silo's data for one run: the training table stays on the cluster, the test rows here.

The agent loads a run's data with `prepare_run_data`: `silos.local_data.prepare_local_data`
for a table that fits, `prepare_dask_data` for one that goes to Dask
(`silos.compute.uses_dask`). The latter reads no training row into the agent's process: it
counts rows and imputed values per partition on the workers and fingerprints the table as the
chunked gate does (`silos.chunked_gate.chunked_fingerprint`), so the agent sees that the data
it loaded is the data validated. The holdout comes from ``[data] test_path``, loaded and encoded
here, since every round scores models on it in this process.

The returned `LocalData` carries the table as a `DaskTable` (`LocalData.dask`) and no training
matrix: only handlers that know the Dask path use it (`DASK_TASK_TYPES`); the agent declines
any other task of a run on such a silo.
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from schemas.contracts.stats import FederationStats
from silos.chunked_gate import CHUNKED_FINGERPRINT_VERSION
from silos.compute import read_partitions, shared_client, uses_dask
from silos.config import SiloConfig
from silos.contract_store import contract_for
from silos.dask_table import DaskTable
from silos.data import load_table, partition_read_error
from silos.exceptions import DataError, FeatureError
from silos.features import FeaturePipeline
from silos.gate import fingerprint_table
from silos.local_data import LocalData, prepare_local_data

if TYPE_CHECKING:
    from distributed import Client

DASK_TASK_TYPES = frozenset({"tree_train", "tree_evaluate", "hist"})
"""Task types whose handlers train on a `DaskTable` (the rest need the rows in memory)."""


def _facts(part: pd.DataFrame, pipeline: FeaturePipeline) -> tuple[str, int, dict[str, int]]:
    return fingerprint_table(part), len(part), pipeline.imputation_report(part)


def table_facts(
    client: Client, table: Any, pipeline: FeaturePipeline
) -> tuple[str, int, dict[str, int]]:
    """(fingerprint, rows, imputed values per feature) of a dask DataFrame, computed on the
    workers; the fingerprint is the chunked gate's (the partitions' digests in order)."""
    import dask

    facts = dask.delayed(_facts, pure=True)
    parts = client.gather(client.compute([facts(p, pipeline) for p in table.to_delayed()]))
    digest = hashlib.sha256(CHUNKED_FINGERPRINT_VERSION)
    imputed: dict[str, int] = {}
    for sha, _, counts in parts:
        digest.update(sha.encode())
        for column, n in counts.items():
            imputed[column] = imputed.get(column, 0) + n
    return digest.hexdigest(), sum(n for _, n, _ in parts), imputed


def prepare_run_data(config: SiloConfig, stats: list[float] | None = None) -> LocalData:
    """The run's data: on the silo's Dask cluster when its training table goes there
    (`uses_dask`), else loaded and encoded in this process (`prepare_local_data`)."""
    if uses_dask(config.compute, config.data.path):
        return prepare_dask_data(config, stats)
    return prepare_local_data(config, stats)


def prepare_dask_data(config: SiloConfig, stats: list[float] | None = None) -> LocalData:
    """The run's data of a Dask silo: its table counted on the cluster, its test file here.

    Raises
    ------
    DataError
        No ``[data] test_path``, or the table cannot be read in partitions.
    FeatureError
        The test rows cannot be encoded per the contract.
    """
    path = config.data.path
    if config.data.test_path is None:
        raise DataError(
            f"{path}: this silo's table goes to Dask ([compute]), which needs a held-out test "
            "file: set [data] test_path (the holdout is scored in the agent's process, and "
            "a split of a table spread over workers is not built)"
        )
    contract = contract_for(config)
    federation = FederationStats.from_summed_moments(stats, contract) if stats else None
    pipeline = FeaturePipeline.from_contract(contract, federation)
    client = shared_client(config.compute)
    table = read_partitions(path, None, config.compute.partition_bytes)
    try:
        data_sha, n_rows, imputed = table_facts(client, table, pipeline)
    except (OSError, ValueError) as exc:  # raised on a worker, re-raised here
        raise partition_read_error(path, exc) from exc
    test = load_table(config.data.test_path)
    try:
        X_test, y_test = pipeline.transform(test, config.data.test_path)
    except FeatureError as exc:
        raise FeatureError(f"{config.data.test_path}: {exc}") from exc
    return LocalData(
        X_train=np.empty((0, pipeline.n_features), dtype=np.float32),
        y_train=np.empty(0, dtype=np.float64),
        X_test=X_test,
        y_test=y_test,
        n_features=pipeline.n_features,
        imputed=imputed,
        data_sha256=data_sha,
        stats=tuple(stats) if stats else None,
        test_sha256=fingerprint_table(test),
        dask=DaskTable(config.compute, path, pipeline, n_rows),
    )
