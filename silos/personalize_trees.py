"""Per-silo personalized tree models: continue boosting the global model on the silo's rows.

The silo boosts up to `max_trees` more rounds from the final global model (XGBoost
``xgb_model=``, LightGBM ``init_model=``) on its fit rows and keeps the number of extra rounds
(0 included) with the lowest validation loss, provided that loss's gain over the global model
holds with `min_confidence` over bootstrap resamples of the validation rows
(`silos.personalize_gate`); otherwise the global model stays. Its local-only model is boosted
from scratch on the same rows for as many rounds as the global model has, early stopped alike.
All three are scored on the silo's held-out rows; the models never leave the silo.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from schemas.task_metrics import score
from schemas.tree_params import TreeSpec
from schemas.wire import Metrics
from silos.exceptions import ModelError
from silos.personalize import Split
from silos.personalize_gate import loss_gain_confidence
from silos.tree_trainer import (
    _base,
    evaluate_trees,
    feature_names_of,
    name_features,
    task_rows,
)


@dataclass(frozen=True)
class PersonalizedTrees:
    """The personalized native model and the three models' held-out metrics."""

    model: bytes
    steps: int  # extra boosting rounds kept
    best_steps: int  # the validation rows' best (kept unless the gate held it back)
    confidence: float | None  # the gate's in best_steps > 0 (None: not asked)
    global_metrics: Metrics
    personalized: Metrics
    local_only: Metrics
    n_fit: int
    n_val: int


def personalize_trees(
    spec: TreeSpec,
    global_model: bytes,
    rows: Split,
    max_trees: int,
    seed: int = 0,
    min_confidence: float = 0.0,
) -> PersonalizedTrees:
    """Continue boosting `global_model` on the silo's rows; see the module docstring.

    Raises
    ------
    ModelError
        The rows do not fit the spec or the global model does not load.
    """
    base, n_base = _base(spec, global_model)
    kept = _boost(spec, base, n_base, rows, max_trees, seed, keep_zero=True, gate=min_confidence)
    local = _boost(spec, None, 0, rows, max(n_base, 1), seed, keep_zero=False).model
    names = feature_names_of(spec, global_model)  # the contract's, as the global model's
    model = name_features(spec, kept.model, names) if names else kept.model
    test = (rows.X_test, rows.y_test)
    return PersonalizedTrees(
        model=model,
        steps=kept.steps,
        best_steps=kept.best_steps,
        confidence=kept.confidence,
        global_metrics=evaluate_trees(spec, global_model, *test),
        personalized=evaluate_trees(spec, model, *test),
        local_only=evaluate_trees(spec, local, *test),
        n_fit=len(rows.y_fit),
        n_val=len(rows.y_val),
    )


def _boost(
    spec: TreeSpec,
    base: Any,
    n_base: int,
    rows: Split,
    rounds: int,
    seed: int,
    keep_zero: bool,
    gate: float = 0.0,
) -> _Kept:
    """Boost `rounds` rounds from `base` on the fit rows; the model truncated to the number of
    extra rounds with the lowest validation loss (0 allowed when `keep_zero`), and it. With
    `gate` > 0, 0 extra rounds unless the best beats them on that share of bootstrap
    resamples of the validation rows."""
    X, y = task_rows(spec, rows.X_fit, rows.y_fit)
    Xv, yv = task_rows(spec, rows.X_val, rows.y_val)
    params = spec.native_params(seed=seed, n_threads=1)
    booster: Any  # xgboost.Booster or lightgbm.Booster
    if spec.kind == "xgboost":
        import xgboost as xgb

        booster = xgb.train(params, xgb.DMatrix(X, label=y), rounds, xgb_model=base)
        dval = xgb.DMatrix(Xv)

        def predict(k: int) -> np.ndarray:
            return np.asarray(booster.predict(dval, iteration_range=(0, n_base + k)))

        def native(k: int) -> bytes:
            return bytes(booster[: n_base + k].save_raw("json"))
    else:
        import lightgbm as lgb

        data = lgb.Dataset(X, label=y, params={"max_bin": params["max_bin"], "verbosity": -1})
        booster = lgb.train(params, data, num_boost_round=rounds, init_model=base)

        def predict(k: int) -> np.ndarray:
            return np.asarray(booster.predict(Xv, num_iteration=n_base + k))

        def native(k: int) -> bytes:
            return str(booster.model_to_string(num_iteration=n_base + k)).encode()

    grown = _rounds(spec, booster) - n_base
    if grown <= 0 and not keep_zero:
        raise ModelError(f"{spec.kind} grew no tree on this silo's {len(y)} fit rows")
    candidates = range(0 if keep_zero else 1, max(grown, 0) + 1)
    losses = {k: _loss(spec, yv, predict(k)) for k in candidates}
    best = min(losses, key=lambda k: (losses[k], k))
    if best == 0 or gate <= 0:
        return _Kept(native(best), best, best, None)
    confidence = loss_gain_confidence(spec.task, yv, predict(best), predict(0), seed)
    kept = best if confidence >= gate else 0
    return _Kept(native(kept), kept, best, confidence)


class _Kept(NamedTuple):
    model: bytes
    steps: int
    best_steps: int
    confidence: float | None


def _rounds(spec: TreeSpec, booster: Any) -> int:
    if spec.kind == "xgboost":
        return int(booster.num_boosted_rounds())
    return int(booster.num_trees()) // spec.n_outputs


def _loss(spec: TreeSpec, y: np.ndarray, pred: np.ndarray) -> float:
    if spec.task == "multiclass":
        pred = pred.reshape(len(y), spec.num_class)
    loss = score(spec.task, y, pred)["loss"]
    assert loss is not None  # score always computes the loss
    return float(loss)
