"""Local boosting of a silo's trees, starting from the current global tree model.

The silo boosts `spec.trees_per_round` trees on its encoded rows, continuing from the global
model (XGBoost ``xgb_model=``, LightGBM ``init_model=``), and returns a native model that holds
ONLY the new trees: XGBoost ``booster[n_base:]`` (JSON; the base score and learner settings
come along), LightGBM ``model_to_string(start_iteration=n_base)``. The service appends them
(scaled in bagging, unscaled in cyclic) to its own copy of the global model, so a silo never
resends the whole ensemble. A multi:softprob model grows K trees per boosting round (one per
class), so its tree counts here are boosting rounds, not trees. `build_update` wraps them in
the envelope that binds them to the run, round, silo and the sha256 of the model they were
grown from.

`name_features` writes the contract's encoded feature names (the feature pipeline's, in
order) into a native model, so that plain XGBoost (and LightGBM with ``validate_features``)
refuses a table whose columns are misnamed or reordered. Inside the silo the rows are the
pipeline's by construction, so a loaded global model's names are dropped before boosting on
(or predicting from) unnamed arrays.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from schemas.task_metrics import score
from schemas.tree_params import TreeSpec
from schemas.tree_payload import TreeUpdateHeader, encode_tree_update, sha256_hex
from schemas.wire import Metrics
from silos.exceptions import ModelError
from silos.rows import checked_rows


@dataclass(frozen=True)
class TreeTrainResult:
    """What one round of local boosting produced.

    `model` holds only the new trees; `n_base_trees` is how many boosting rounds the global
    model had (the round the new trees start at once appended); both counts are boosting
    rounds, K trees each for multi:softprob.
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
        Encoded features (n, spec.n_features) and targets: 0/1 (binary:logistic), the class
        index 0..K-1 (multi:softprob) or the value (reg:squarederror).
    seed, n_threads
        Library seed and thread count; the same seed, data and start give the same trees.

    Raises
    ------
    ModelError
        The arrays do not fit the spec, the global model does not load or has another
        feature count, or the library grew no tree.
    """
    X, y = task_rows(spec, X, y)
    started = time.perf_counter()
    base, n_base = _base(spec, global_model)
    boost = _train_xgb if spec.kind == "xgboost" else _train_lgb
    model, n_new, version = boost(spec, base, n_base, X, y, seed, n_threads)
    if n_new == 0:
        raise no_tree_grown(spec.kind, len(y))
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
    """The task's metrics (`schemas.task_metrics.score`) of a global model on local holdout
    rows, predicted by the library itself (a metric undefined on these rows is None).

    Raises
    ------
    ModelError
        The arrays do not fit the spec, or the model does not load.
    """
    X, y = task_rows(spec, X, y)
    metrics = score(spec.task, y, predict_trees(spec, model, X))
    return Metrics(n_test=len(y), **metrics)  # type: ignore[arg-type]


def task_rows(spec: TreeSpec, X: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """`checked_rows`, plus class indices in 0..K-1 for multi:softprob (ModelError if not)."""
    X, y = checked_rows(X, y, spec.n_features, binary=spec.task == "binary")
    if spec.task == "multiclass":
        bad = (y != np.round(y)) | (y < 0) | (y >= spec.num_class)
        if bad.any():
            raise ModelError(
                f"multiclass labels must be class indices 0..{spec.num_class - 1} (the position "
                f"of the class in the contract's target values); got {y[bad][0]!r}"
            )
    return X, y


def predict_trees(spec: TreeSpec, model: bytes, X: np.ndarray) -> np.ndarray:
    """The library's prediction: P(y = 1) (n,), class probabilities (n, K), or values (n,)."""
    booster = _load(spec, model)
    if spec.kind == "xgboost":
        import xgboost as xgb

        # X is the pipeline's encoding, so its columns are the model's names in order
        rows = xgb.DMatrix(X, feature_names=booster.feature_names)
        pred = np.asarray(booster.predict(rows), dtype=np.float64)
    else:
        pred = np.asarray(booster.predict(X), dtype=np.float64)
    if spec.task == "multiclass":
        return pred.reshape(len(X), spec.num_class)
    return pred.reshape(-1)


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
    if xgboost:
        # XGBoost refuses to boost a named model on unnamed rows (the silo's arrays, the Dask
        # and collective workers'); `name_features` names the new trees afterwards
        base.feature_names = None
        base.feature_types = None
    # boosting rounds (LightGBM counts trees, K per round for multiclass)
    return base, base.num_boosted_rounds() if xgboost else base.num_trees() // spec.n_outputs


def unnamed(spec: TreeSpec, model: bytes) -> bytes:
    """`model` without feature names, for a worker that boosts from it on unnamed arrays."""
    if spec.kind != "xgboost":
        return model  # LightGBM boosts a named model on unnamed rows
    booster = _load(spec, model)
    booster.feature_names = None
    booster.feature_types = None
    return bytes(booster.save_raw("json"))


def feature_names_of(spec: TreeSpec, model: bytes) -> list[str] | None:
    """The feature names `model` carries (None: an XGBoost model without them; a LightGBM
    model always has some, ``Column_0`` ... when it was never named)."""
    booster = _load(spec, model)
    if spec.kind == "xgboost":
        return list(booster.feature_names) if booster.feature_names else None
    return list(booster.feature_name())


def name_features(spec: TreeSpec, model: bytes, names: Sequence[str]) -> bytes:
    """`model` (new trees) with `names` as its feature names, in column order.

    LightGBM writes a space in a name as ``_`` (its own rule, applied here as well), so a
    LightGBM model's names are those with spaces replaced.

    Raises
    ------
    ModelError
        `names` are not one per feature of the spec.
    """
    if len(names) != spec.n_features:
        raise ModelError(
            f"{len(names)} feature names for a model of {spec.n_features} features; rebuild the "
            "silo's features from the run's data contract"
        )
    booster = _load(spec, model)
    if spec.kind == "xgboost":
        booster.feature_names = list(names)
        return bytes(booster.save_raw("json"))
    import lightgbm as lgb

    lines = model.decode().split("\n")
    at = next(i for i, line in enumerate(lines) if line.startswith("feature_names="))
    lines[at] = "feature_names=" + " ".join(n.replace(" ", "_") for n in names)
    # saved again by LightGBM, so the feature importances name the features too
    return str(lgb.Booster(model_str="\n".join(lines)).model_to_string()).encode()


def no_tree_grown(kind: str, n_rows: int) -> ModelError:
    """The refusal when boosting grew no tree on the silo's rows (no split gains)."""
    return ModelError(
        f"{kind} grew no new tree on this silo's {n_rows} rows (no split with positive gain); "
        "the silo sits this round out"
    )


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
    n_new = booster.num_trees() // spec.n_outputs - n_base
    text = booster.model_to_string(start_iteration=n_base) if n_new > 0 else ""
    return text.encode(), n_new, lgb.__version__
