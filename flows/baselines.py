"""Baselines the demo compares the federated model against.

- pooled (centralized): the same model trained on every silo's training rows together, the
  upper bound federation tries to approach without moving data;
- local-only: each silo training alone on its own rows, what a hospital gets without joining.

Both get the federated run's epoch budget (rounds x local_epochs passes over their rows),
under its learning-rate schedule (`TrainingSpec.for_round`, round by round), and start from
the same initial parameters. `comparison_table` scores any set of models on every
silo's test set and on all test sets pooled.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd

from schemas.contracts import Contract
from schemas.contracts.stats import FederationStats
from schemas.specs import ModelSpec, RunSpec
from silos.data import split_train_test
from silos.features import FeaturePipeline
from silos.torch_model import build_model, get_params
from silos.trainer import evaluate, train_local

ALL_TEST_SETS = "all"
_MAX_EPOCHS_PER_CALL = 1000  # TrainingSpec's ceiling on local_epochs


@dataclass(frozen=True)
class SiloArrays:
    """One silo's encoded train and test rows."""

    X_train: np.ndarray
    y_train: np.ndarray
    X_test: np.ndarray
    y_test: np.ndarray


def prepare_silo_arrays(
    frames: Mapping[str, pd.DataFrame],
    contract: Contract,
    test_fraction: float,
    seed: int,
    stats: FederationStats | None = None,
) -> dict[str, SiloArrays]:
    """Split each silo's table (stratified, seeded) and encode both parts with the pipeline
    (standardised with `stats` when the contract's pipeline uses federation statistics)."""
    pipeline = FeaturePipeline.from_contract(contract, stats)
    arrays = {}
    for silo, frame in frames.items():
        train, test = split_train_test(frame, contract, test_fraction, seed)
        X_train, y_train = pipeline.transform(train)
        X_test, y_test = pipeline.transform(test)
        arrays[silo] = SiloArrays(X_train, y_train, X_test, y_test)
    return arrays


def train_centralized(
    spec: RunSpec, X: np.ndarray, y: np.ndarray, init_seed: int = 0
) -> list[np.ndarray]:
    """Train `spec.model` on pooled rows for `spec.rounds * local_epochs` epochs.

    Parameters
    ----------
    spec
        The federated run being compared against: its model, training settings and rounds.
    X, y
        Every silo's training rows stacked together.
    init_seed
        Seed of the initial parameters; use the federated run's to compare like with like.

    Returns
    -------
    list of numpy.ndarray
        The trained parameters in `param_shapes(spec.torch_model)` order.
    """
    params = get_params(build_model(spec.torch_model, seed=init_seed))
    if spec.training.lr_schedule != "constant":  # each round's epochs at that round's rate
        for r in range(1, spec.rounds + 1):
            training = spec.training.for_round(r, spec.rounds)
            params = train_local(spec.torch_model, params, X, y, training).params
        return params
    remaining = spec.rounds * spec.training.local_epochs
    while remaining > 0:
        epochs = min(remaining, _MAX_EPOCHS_PER_CALL)
        training = spec.training.model_copy(update={"local_epochs": epochs})
        params = train_local(spec.torch_model, params, X, y, training).params
        remaining -= epochs
    return params


def local_only(
    spec: RunSpec, silos: Mapping[str, tuple[np.ndarray, np.ndarray]], init_seed: int = 0
) -> dict[str, list[np.ndarray]]:
    """Each silo's model trained on its own training rows only, with the same epoch budget."""
    return {name: train_centralized(spec, X, y, init_seed) for name, (X, y) in silos.items()}


def comparison_table(
    model: ModelSpec,
    models: Mapping[str, list[np.ndarray]],
    test_sets: Mapping[str, tuple[np.ndarray, np.ndarray]],
) -> list[dict[str, object]]:
    """Score every model on every test set and on all test sets together.

    Parameters
    ----------
    model
        The architecture all the parameter sets belong to.
    models
        Display name -> parameters, e.g. ``{"federated": ..., "local:cleveland": ...,
        "pooled": ...}``.
    test_sets
        Silo name -> (X_test, y_test).

    Returns
    -------
    list of dict
        One row per (model, test set) with keys ``model``, ``test_set`` (a silo name or
        ``"all"``) and every field of `schemas.wire.Metrics`: ``n_test``, ``loss`` and the
        task's metrics (binary accuracy, auc; multiclass accuracy, f1_macro; regression rmse,
        mae, r2), the others None; models in the given order, silos first and ``"all"`` last.
    """
    pooled = (
        np.concatenate([X for X, _ in test_sets.values()]),
        np.concatenate([y for _, y in test_sets.values()]),
    )
    rows: list[dict[str, object]] = []
    for name, params in models.items():
        for test_name, (X, y) in [*test_sets.items(), (ALL_TEST_SETS, pooled)]:
            metrics = evaluate(model, params, X, y)
            # every metric of the task (schemas.task_metrics); the others are None
            rows.append({"model": name, "test_set": test_name, **metrics.model_dump()})
    return rows
