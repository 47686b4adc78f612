"""The silo's training and holdout matrices for one run, built from its own data file."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from schemas.contracts.loader import Contract
from schemas.contracts.stats import FederationStats
from silos.config import SiloConfig
from silos.contract_store import contract_for
from silos.data import load_table, split_train_test
from silos.exceptions import FeatureError
from silos.features import FeaturePipeline
from silos.gate import fingerprint_table

if TYPE_CHECKING:
    from silos.dask_table import DaskTable


@dataclass(frozen=True)
class LocalData:
    X_train: np.ndarray
    y_train: np.ndarray
    X_test: np.ndarray
    y_test: np.ndarray
    n_features: int
    imputed: dict[str, int]
    data_sha256: str
    stats: tuple[float, ...] | None = None
    test_sha256: str | None = None  # the held-out test file's, when silo.toml names one
    # a Dask silo's training table (silos.dask_data): X_train and y_train are then empty
    dask: DaskTable | None = None

    @property
    def n_train(self) -> int:
        """Training rows, in memory or on the silo's Dask cluster."""
        return self.dask.n_rows if self.dask is not None else len(self.y_train)

    @property
    def fingerprints(self) -> tuple[str, str | None]:
        """What the data were loaded from; compare with `ValidationSummary.fingerprints`."""
        return (self.data_sha256, self.test_sha256)


def local_train_table(config: SiloConfig) -> pd.DataFrame:
    """The silo's training rows (the same split `prepare_local_data` uses)."""
    contract = contract_for(config)
    return _train_test(config, contract, load_table(config.data.path))[0]


def _train_test(
    config: SiloConfig, contract: Contract, table: pd.DataFrame
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """All of `path` and the test file when silo.toml names `test_path`; else the split."""
    if config.data.test_path is not None:
        return table, load_table(config.data.test_path)
    return split_train_test(table, contract, config.data.test_fraction, config.data.split_seed)


def prepare_local_data(config: SiloConfig, stats: list[float] | None = None) -> LocalData:
    """Load the silo's table, split it (stratified, fixed seed; or take the test file when
    silo.toml names `test_path`) and encode it per the contract,
    standardising with the federation's statistics when the contract asks for them.
    (The agent calls `silos.dask_data.prepare_run_data`, which keeps a table that goes to
    Dask on the silo's cluster.)"""
    contract = contract_for(config)
    table = load_table(config.data.path)
    train, test = _train_test(config, contract, table)
    federation = FederationStats.from_summed_moments(stats, contract) if stats else None
    pipeline = FeaturePipeline.from_contract(contract, federation)
    X_train, y_train = _encoded(pipeline, train, config.data.path)
    X_test, y_test = _encoded(pipeline, test, config.data.test_path or config.data.path)
    return LocalData(
        X_train=X_train,
        y_train=y_train,
        X_test=X_test,
        y_test=y_test,
        n_features=pipeline.n_features,
        imputed=pipeline.imputation_report(table),
        data_sha256=fingerprint_table(table),
        stats=tuple(stats) if stats else None,
        test_sha256=fingerprint_table(test) if config.data.test_path is not None else None,
    )


def _encoded(pipeline: FeaturePipeline, df: pd.DataFrame, path: Path) -> tuple[np.ndarray, ...]:
    """Features and labels, errors naming the file the rows came from."""
    try:
        return pipeline.transform(df, path)
    except FeatureError as exc:
        raise FeatureError(f"{path}: {exc}") from exc
