"""Local boosting of a silo's trees, starting from the current global tree model.

The silo boosts `spec.trees_per_round` trees on its encoded rows, continuing from the global
model (XGBoost ``xgb_model=``, LightGBM ``init_model=``), and returns a native model that holds
ONLY the new trees: XGBoost ``booster[n_base:]`` (JSON; the base score and learner settings
come along), LightGBM ``model_to_string(start_iteration=n_base)``. The service appends them
(scaled in bagging, unscaled in cyclic) to its own copy of the global model, so a silo never
resends the whole ensemble. `build_update` wraps them in the envelope that binds them to the
run, round, silo and the sha256 of the model they were grown from.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from sklearn.metrics import roc_auc_score

from schemas.tree_params import TreeSpec
from schemas.tree_payload import TreeUpdateHeader, encode_tree_update, sha256_hex
from schemas.wire import Metrics
from silos.exceptions import ModelError
from silos.rows import checked_rows


@dataclass(frozen=True)
class TreeTrainResult:
    """What one round of local boosting produced.

    `model` holds only the new trees; `n_base_trees` is how many trees the global model had
    (the index the new trees start at once appended).
    """

    model: bytes
    n_new_trees: int
    n_base_trees: int
    n_examples: int
    seconds: float
    library_version: str


def train_trees(
    spec: TreeSpec,
    global_model: bytes | None,
    X: np.ndarray,
    y: np.ndarray,
    *,
    seed: int = 0,
    n_threads: int = 1,
) -> TreeTrainResult:
    """Boost `spec.trees_per_round` trees on local rows from `global_model`.

    Parameters
    ----------
    spec
        The run's tree spec (library, objective, hyperparameters, trees per round).
    global_model
        Native bytes of the model to continue from (XGBoost JSON, LightGBM text), or None to
        start from scratch (the first round of bagging, the first silo of cyclic).
    X, y
        Encoded features (n, spec.n_features) and targets (0/1 for binary:logistic).
    seed, n_threads
        Library seed and thread count; the same seed, data and start give the same trees.

    Raises
    ------
    ModelError
        The arrays do not fit the spec, the global model does not load or has another
        feature count, or the library grew no tree.
    """
    X, y = checked_rows(X, y, spec.n_features, binary=spec.objective == "binary:logistic")
    started = time.perf_counter()
    base, n_base = _base(spec, global_model)
    boost = _train_xgb if spec.kind == "xgboost" else _train_lgb
    model, n_new, version = boost(spec, base, n_base, X, y, seed, n_threads)
    if n_new == 0:
        raise ModelError(
            f"{spec.kind} grew no new tree on this silo's {len(y)} rows (no split with positive "
            "gain); the silo sits this round out"
        )
    seconds = time.perf_counter() - started
    return TreeTrainResult(model, n_new, n_base, len(y), seconds, version)


def build_update(
    result: TreeTrainResult,
    spec: TreeSpec,
    *,
    run_id: str,
    round_num: int,
    silo: str,
    global_model: bytes | None,
    metrics: Metrics | None = None,
) -> bytes:
    """Wrap the new trees in the envelope the service validates (before sealing it).

    `metrics` is the silo's evaluation of `global_model` on its holdout, reported with the trees.
    """
    header = TreeUpdateHeader(
        run_id=run_id,
        round=round_num,
        silo=silo,
        kind=spec.kind,
        mode=spec.mode,
        base_model_sha256=sha256_hex(global_model) if global_model is not None else None,
        n_base_trees=result.n_base_trees,
        n_new_trees=result.n_new_trees,
        n_examples=result.n_examples,
        n_features=spec.n_features,
        model_sha256=sha256_hex(result.model),
        library_version=result.library_version,
        train_seconds=result.seconds,
        metrics_json=metrics.model_dump_json() if metrics is not None else None,
    )
    return encode_tree_update(header, result.model)


def evaluate_trees(spec: TreeSpec, model: bytes, X: np.ndarray, y: np.ndarray) -> Metrics:
    """Log loss, accuracy at 0.5 and ROC AUC of a binary global model on local holdout rows,
    predicted by the library itself (AUC is None for a one-class holdout).

    Raises
    ------
    ModelError
        The arrays do not fit the spec, the objective is not binary, or the model does not load.
    """
    X, y = checked_rows(X, y, spec.n_features, binary=spec.objective == "binary:logistic")
    if spec.objective != "binary:logistic":
        raise ModelError(f"evaluate_trees scores binary models; the run's is {spec.objective}")
    probs = np.clip(_predict_proba(spec, model, X), 1e-15, 1 - 1e-15)
    loss = float(-np.mean(y * np.log(probs) + (1 - y) * np.log(1 - probs)))
    accuracy = float(np.mean((probs >= 0.5) == (y == 1)))
    auc = float(roc_auc_score(y, probs)) if len(np.unique(y)) == 2 else None
    return Metrics(n_test=len(y), loss=loss, accuracy=accuracy, auc=auc)


_LIBRARY = {"xgboost": "XGBoost", "lightgbm": "LightGBM"}


def _load(spec: TreeSpec, model: bytes) -> Any:
    """The library's booster of a native model (ModelError naming the library if it fails)."""
    if spec.kind == "xgboost":
        import xgboost as xgb

        errors: tuple[type[Exception], ...] = (xgb.core.XGBoostError,)
        load: Callable[[], Any] = lambda: xgb.Booster(model_file=bytearray(model))  # noqa: E731
    else:
        import lightgbm as lgb

        errors = (lgb.basic.LightGBMError, UnicodeDecodeError)
        load = lambda: lgb.Booster(model_str=model.decode())  # noqa: E731
    try:
        return load()
    except errors as exc:
        raise ModelError(f"the global {_LIBRARY[spec.kind]} model does not load: {exc}") from exc


def _base(spec: TreeSpec, global_model: bytes | None) -> tuple[Any, int]:
    """The model to boost from (None: from scratch) and how many trees it has, checked
    against the spec's feature count."""
    if global_model is None:
        return None, 0
    base = _load(spec, global_model)
    xgboost = spec.kind == "xgboost"
    n_features = base.num_features() if xgboost else base.num_feature()
    if n_features != spec.n_features:
        raise ModelError(
            f"the global model has {n_features} features; this silo's rows have {spec.n_features}"
        )
    return base, base.num_boosted_rounds() if xgboost else base.num_trees()


def _predict_proba(spec: TreeSpec, model: bytes, X: np.ndarray) -> np.ndarray:
    booster = _load(spec, model)
    if spec.kind == "xgboost":
        import xgboost as xgb

        return np.asarray(booster.predict(xgb.DMatrix(X)), dtype=np.float64)
    return np.asarray(booster.predict(X), dtype=np.float64)


def _train_xgb(
    spec: TreeSpec, base: Any, n_base: int, X: np.ndarray, y: np.ndarray, seed: int, threads: int
) -> tuple[bytes, int, str]:
    import xgboost as xgb

    dtrain = xgb.DMatrix(X, label=y, nthread=threads)
    booster = xgb.train(
        spec.native_params(seed=seed, n_threads=threads),
        dtrain,
        num_boost_round=spec.trees_per_round,
        xgb_model=base,
    )
    new = booster[n_base:]
    return bytes(new.save_raw("json")), new.num_boosted_rounds(), xgb.__version__


def _train_lgb(
    spec: TreeSpec, base: Any, n_base: int, X: np.ndarray, y: np.ndarray, seed: int, threads: int
) -> tuple[bytes, int, str]:
    import lightgbm as lgb

    params = spec.native_params(seed=seed, n_threads=threads)
    dataset = lgb.Dataset(X, label=y, params={"max_bin": params["max_bin"], "verbosity": -1})
    booster = lgb.train(params, dataset, num_boost_round=spec.trees_per_round, init_model=base)
    n_new = booster.num_trees() - n_base
    text = booster.model_to_string(start_iteration=n_base) if n_new > 0 else ""
    return text.encode(), n_new, lgb.__version__
