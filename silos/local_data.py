"""The silo's training and holdout matrices for one run, built from its own data file."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from schemas.contracts.loader import load_contract
from schemas.contracts.stats import FederationStats
from silos.config import SiloConfig
from silos.data import load_table, split_train_test
from silos.features import FeaturePipeline
from silos.gate import fingerprint_table


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


def local_train_table(config: SiloConfig) -> pd.DataFrame:
    """The silo's training rows (the same split `prepare_local_data` uses)."""
    contract = load_contract(config.data.contract)
    table = load_table(config.data.path)
    return split_train_test(table, contract, config.data.test_fraction, config.data.split_seed)[0]


def prepare_local_data(config: SiloConfig, stats: list[float] | None = None) -> LocalData:
    """Load the silo's table, split it (stratified, fixed seed) and encode it per the contract,
    standardising with the federation's statistics when the contract asks for them."""
    contract = load_contract(config.data.contract)
    table = load_table(config.data.path)
    train, test = split_train_test(
        table, contract, config.data.test_fraction, config.data.split_seed
    )
    federation = FederationStats.from_summed_moments(stats, contract) if stats else None
    pipeline = FeaturePipeline.from_contract(contract, federation)
    X_train, y_train = pipeline.transform(train)
    X_test, y_test = pipeline.transform(test)
    return LocalData(
        X_train=X_train,
        y_train=y_train,
        X_test=X_test,
        y_test=y_test,
        n_features=pipeline.n_features,
        imputed=pipeline.imputation_report(table),
        data_sha256=fingerprint_table(table),
        stats=tuple(stats) if stats else None,
    )
