"""Local boosting on a Dask silo: XGBoost's and LightGBM's Dask interfaces, same update.

`train_trees_dask` is `silos.tree_trainer.train_trees` for a table spread over the silo's Dask
workers (`silos.compute`): every partition is encoded by the contract's pipeline on its
worker (`encoded_frame`), the library trains across the workers (XGBoost's collective over
`xgboost.dask`, LightGBM's socket-based data-parallel learner over `lightgbm.dask`), and the
result is the same kind of native model holding only the new trees, continued from the
federation's global model, so the service cannot tell a Dask silo's update from any other.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from schemas.tree_params import TreeSpec
from silos.features import FeaturePipeline
from silos.tree_trainer import TreeTrainResult, no_tree_grown
from silos.tree_trainer import _base as base_model  # the same checks on the global model

LABEL = "__label__"


def _encode_partition(part: pd.DataFrame, pipeline: FeaturePipeline, source: Path) -> pd.DataFrame:
    X, y = pipeline.transform(part, source)
    out = pd.DataFrame(np.asarray(X, dtype=np.float32), columns=list(pipeline.feature_names))
    out[LABEL] = np.asarray(y, dtype=np.float64)
    return out


def encoded_frame(table: Any, pipeline: FeaturePipeline, source: Path) -> tuple[Any, Any]:
    """Features and labels of a dask DataFrame, encoded per partition and kept on the
    workers: (X, y) as dask arrays with known chunk sizes."""
    meta = pd.DataFrame(
        {
            **{name: np.zeros(0, np.float32) for name in pipeline.feature_names},
            LABEL: np.zeros(0, np.float64),
        }
    )
    frame = table.map_partitions(_encode_partition, pipeline, source, meta=meta).persist()
    # arrays, not frames: a model trained on named columns would not continue from, or
    # predict on, the federation's models, which are trained on unnamed matrices
    X = frame[list(pipeline.feature_names)].to_dask_array(lengths=True)
    return X, frame[LABEL].to_dask_array(lengths=True)


def train_trees_dask(
    client: Any, spec: TreeSpec, global_model: bytes | None, X: Any, y: Any, *, seed: int = 0
) -> TreeTrainResult:
    """Boost `spec.trees_per_round` trees on the silo's partitions from `global_model`.

    Raises
    ------
    ModelError
        The global model does not load or has another feature count, or no tree grew.
    """
    started = time.perf_counter()
    base, n_base = base_model(spec, global_model)
    n_rows = int(y.shape[0])
    boost = _xgb if spec.kind == "xgboost" else _lgb
    model, n_new, version = boost(client, spec, base, n_base, X, y, seed)
    if n_new == 0:
        raise no_tree_grown(spec.kind, n_rows)
    return TreeTrainResult(model, n_new, n_base, n_rows, time.perf_counter() - started, version)


def _xgb(
    client: Any, spec: TreeSpec, base: Any, n_base: int, X: Any, y: Any, seed: int
) -> tuple[bytes, int, str]:
    import xgboost as xgb
    from xgboost import dask as dxgb

    dtrain = dxgb.DaskDMatrix(client, X, y)
    out = dxgb.train(
        client,
        spec.native_params(seed=seed, n_threads=1),
        dtrain,
        num_boost_round=spec.trees_per_round,
        xgb_model=base,
    )
    new = out["booster"][n_base:]
    return bytes(new.save_raw("json")), new.num_boosted_rounds(), xgb.__version__


def _lgb(
    client: Any, spec: TreeSpec, base: Any, n_base: int, X: Any, y: Any, seed: int
) -> tuple[bytes, int, str]:
    import lightgbm as lgb
    from lightgbm import dask as dlgb

    params = spec.native_params(seed=seed, n_threads=1)
    params.pop("deterministic", None)  # single-machine option; the Dask learner sets its own
    estimator = (
        dlgb.DaskLGBMRegressor
        if spec.objective == "reg:squarederror"
        else (dlgb.DaskLGBMClassifier)
    )
    params.pop("num_class", None)  # the classifier derives it from the labels
    n_rounds = spec.trees_per_round
    model = estimator(client=client, n_estimators=n_rounds, **params)
    # the global model's trees first: init_model reaches each worker's local fit
    model.fit(X, y, init_model=base)
    booster = model.to_local().booster_
    n_new = booster.num_trees() // spec.n_outputs - n_base
    text = booster.model_to_string(start_iteration=n_base) if n_new > 0 else ""
    return text.encode(), n_new, lgb.__version__
