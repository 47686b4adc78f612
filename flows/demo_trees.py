"""Tree-model runs in the demo: the run's spec, the collective's certificates, the baselines.

Every model gets the same budget of boosting steps T (`STEPS`), as in `bench/trees.py`:
bagging and collective add `TREES_PER_ROUND` trees (one averaged step each) per round, as does
secure-hist (trees grown by the service from securely summed histograms), cyclic lets every
silo add `TREES_PER_ROUND` trees per round in turn, and each silo alone and the pooled model
boost T trees on their own rows. The objective follows the contract's task (binary,
multiclass with K trees per boosting step, regression; `schemas.objectives`), and the
comparison scores every model with that task's metrics.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from aggregation.pki import issue_ca, issue_leaf
from flows.baselines import ALL_TEST_SETS, SiloArrays
from schemas.tree_params import TreeKind, TreeMode, TreeSpec, task_fields
from silos.tree_trainer import evaluate_trees, train_trees

STEPS = 60
TREES_PER_ROUND = 3
# secure-hist: no histogram or leaf describes fewer rows federation-wide (silo policy too)
MIN_ROWS_PER_NODE = 10
PARAMS: dict[str, dict[str, object]] = {
    "xgboost": {"max_depth": 3, "eta": 0.1},
    "lightgbm": {"num_leaves": 7, "max_depth": 3, "learning_rate": 0.1, "min_data_in_leaf": 10},
}


def tree_spec(
    kind: TreeKind,
    mode: TreeMode,
    n_features: int,
    task: str = "binary",
    n_classes: int = 0,
    fine_cells: int = 0,
    grad_bits: int = 0,
) -> TreeSpec:
    """The demo's tree spec; `task` and `n_classes` are the contract's (`Contract.task`,
    ``len(Contract.classes)``) and set the objective; `fine_cells` fixes secure-hist's fine
    grid (0: the service's choice, `schemas.secure_hist.protocol.auto_fine_cells`) and
    `grad_bits` quantizes its gradients (0: lossless)."""
    spec: dict[str, object] = {
        "kind": kind,
        "mode": mode,
        "n_features": n_features,
        "trees_per_round": TREES_PER_ROUND,
        "params": PARAMS[kind],
        **task_fields(task, n_classes),
    }
    if mode == "secure-hist":
        grid = {"fine_cells": fine_cells} if fine_cells else {}
        bits = {"grad_bits": grad_bits} if grad_bits else {}
        spec["secure_hist"] = {"min_rows_per_node": MIN_ROWS_PER_NODE, **grid, **bits}
    return TreeSpec.model_validate(spec)


def rounds_for(mode: TreeMode, n_silos: int) -> int:
    """Rounds that give the federated model `STEPS` boosting steps (secure-hist, bagging and
    collective: `TREES_PER_ROUND` steps a round; cyclic: that many per silo)."""
    per_round = TREES_PER_ROUND * (n_silos if mode == "cyclic" else 1)
    return math.ceil(STEPS / per_round)


@dataclass(frozen=True)
class CollectivePKI:
    """The demo federation's CA, the collective server's certificate, one per silo."""

    service_env: dict[str, str]
    silo_files: dict[str, tuple[Path, Path, Path]]  # silo -> (ca, cert, key)


def collective_pki(folder: Path, silos: list[str], host: str = "127.0.0.1") -> CollectivePKI:
    """Issue a throw-away federation CA and the certificates XGBoost's collective needs."""
    folder.mkdir(parents=True, exist_ok=True)
    ca = issue_ca("fedsilo demo federation CA")
    ca_path = folder / "federation-ca.pem"
    ca.write(ca_path, folder / "federation-ca.key")
    server = issue_leaf(ca, "collective", server_hosts=[host])
    server.write(folder / "collective.pem", folder / "collective.key")
    files = {}
    for name in silos:
        leaf = issue_leaf(ca, name, server_hosts=[])
        leaf.write(folder / f"{name}.pem", folder / f"{name}.key")
        files[name] = (ca_path, folder / f"{name}.pem", folder / f"{name}.key")
    env = {
        "FEDSILO_SERVICE_COLLECTIVE_CERT": str(folder / "collective.pem"),
        "FEDSILO_SERVICE_COLLECTIVE_KEY": str(folder / "collective.key"),
        "FEDSILO_SERVICE_COLLECTIVE_CA": str(ca_path),
        "FEDSILO_SERVICE_COLLECTIVE_HOST": host,
        "FEDSILO_SERVICE_COLLECTIVE_SERVER_NAME": host,
    }
    return CollectivePKI(env, files)


def alone(spec: TreeSpec, X: np.ndarray, y: np.ndarray, seed: int = 0) -> bytes:
    """`STEPS` boosting steps on the given rows only (pooled, or one silo)."""
    single = spec.model_copy(update={"trees_per_round": STEPS})
    return train_trees(single, None, X, y, seed=seed).model


def comparison_rows(
    spec: TreeSpec, models: Mapping[str, bytes], arrays: Mapping[str, SiloArrays]
) -> list[dict[str, object]]:
    """Score every model on every silo's test set and on all of them (same rows as
    `flows.baselines.comparison_table`), predicting with the library itself."""
    pooled = (
        np.concatenate([a.X_test for a in arrays.values()]),
        np.concatenate([a.y_test for a in arrays.values()]),
    )
    tests = [*((n, (a.X_test, a.y_test)) for n, a in arrays.items()), (ALL_TEST_SETS, pooled)]
    rows: list[dict[str, object]] = []
    for name, model in models.items():
        for test_name, (X, y) in tests:
            m = evaluate_trees(spec, model, X, y)
            # every metric of the task (schemas.task_metrics); the others are None
            rows.append({"model": name, "test_set": test_name, **m.model_dump()})
    return rows
