"""`fedsilo predict`: a horizontal run's global model applied to new rows, by column name.

The rows are read and encoded as the silos read and encode theirs: `silos.data.load_table`,
then the feature pipeline of the data contract the run pinned (`silos.features`), which picks
columns by name, so their order in the file does not matter; a missing column, an unseen
category or a value missing where the contract allows none is refused naming the file and the
column. The target column may be absent. The model is the run's final model (or the version
asked for), downloaded from the service and checked against the sha256 the ledger records
(`flows.model_registry`, as `fedsilo model register` checks it), then scored by the code the
silos evaluate with: `silos.trainer.predict` (PyTorch logreg / mlp),
`silos.tree_trainer.predict_trees` (XGBoost, LightGBM) and `silos.ensemble` (FedBoost).

A run whose silos standardised (or imputed) with the federation's statistics encodes new rows
with the same statistics, read from the service and checked against the digest the ledger's
statistics ``aggregate`` entry records: rows encoded with other statistics would not mean what
the model learnt.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from flows.contract_publish import parse_published
from flows.exceptions import FlowError
from flows.model_registry import TREE_KINDS, RunModel
from schemas import tensors
from schemas.contract_registry import contract_sha256
from schemas.contracts.loader import Contract
from schemas.contracts.stats import FederationStats
from schemas.specs import ModelSpec, param_shapes
from schemas.tree_params import TreeSpec
from silos.exceptions import FeatureError, ModelError
from silos.features import FeaturePipeline

if TYPE_CHECKING:
    from flows.service_client import CoordinatorClient

THRESHOLD = 0.5  # the label the silos' accuracy counts (schemas.task_metrics)


class PredictError(FlowError):
    """The run's model cannot be applied to new rows (statistics it needs, a contract that
    does not match the ledger or the model); the message names the run."""


@dataclass(frozen=True)
class Predicted:
    """The output table (kept columns, then the predictions) and what made it."""

    table: pd.DataFrame
    model: RunModel


def run_contract(client: CoordinatorClient, model: RunModel) -> Contract:
    """The published contract the run pinned, its text checked against the ledger's sha256."""
    spec = model.spec
    version = spec.get("contract_version") or model.contract_version
    if not version:
        raise PredictError(
            f"run {model.run_id} pinned no published contract and no silo recorded one, so "
            "there is no pipeline to encode new rows with"
        )
    pc = client.contract(str(spec["federation"]), str(spec["dataset"]), str(version))
    actual = contract_sha256(pc.toml)
    if model.contract_sha256 and actual != model.contract_sha256:
        raise PredictError(
            f"contract {pc.name!r} v{pc.version} on the service hashes to {actual[:12]}…, but "
            f"run {model.run_id} trained under {model.contract_sha256[:12]}… (ledger); run "
            "`fedsilo lineage verify`"
        )
    return parse_published(pc)


def run_statistics(
    client: CoordinatorClient, model: RunModel, contract: Contract
) -> FederationStats | None:
    """The federation statistics the run's silos encoded with (None: the run had none), their
    float32 digest checked against the ledger's statistics ``aggregate`` entry."""
    if not model.spec.get("federation_statistics"):
        return None
    if not model.statistics_digest:
        raise PredictError(
            f"run {model.run_id} asked for federation statistics but its ledger records no "
            "statistics round: its silos never encoded a row, so no model of it can be applied"
        )
    summed = client.run_statistics(model.run_id).statistics
    h = hashlib.sha256(np.asarray(summed, dtype=np.float32).tobytes()).hexdigest()
    if h != model.statistics_digest:
        raise PredictError(
            f"run {model.run_id}'s federation statistics on the service hash to {h[:12]}…, "
            f"the ledger records {model.statistics_digest[:12]}…; run `fedsilo lineage verify`"
        )
    return FederationStats.from_summed_moments(summed, contract)


def run_pipeline(
    model: RunModel, contract: Contract, stats: FederationStats | None = None
) -> FeaturePipeline:
    """The pipeline the run's silos encoded their rows with (with the run's federation
    statistics, when it had them)."""
    pipeline = FeaturePipeline.from_contract(contract, stats)
    width = model_width(model)
    if width is not None and width != pipeline.n_features:
        raise PredictError(
            f"run {model.run_id}'s model takes {width} features, but contract "
            f"{contract.name!r} v{contract.version} encodes {pipeline.n_features}"
        )
    return pipeline


def model_width(model: RunModel) -> int | None:
    """The number of inputs the run's spec gives its model (None: an ensemble's members)."""
    if model.kind == "ensemble":
        return None
    part = model.spec.get("trees") if model.kind in TREE_KINDS else model.spec.get("model")
    return int(part["n_features"]) if isinstance(part, dict) else None


def encode_rows(path: Path, table: pd.DataFrame, pipeline: FeaturePipeline) -> np.ndarray:
    """The feature matrix of `table`, picked by column name; FeatureError naming `path`."""
    try:
        return pipeline.encode(table)
    except FeatureError as exc:
        raise FeatureError(f"{path}: {exc}") from exc


def model_scores(model: RunModel, payload: bytes, X: np.ndarray) -> np.ndarray:
    """The model's outputs on encoded rows, by the silos' own scoring code: P(y = 1) (n,),
    class probabilities (n, k) or values in the target's units (n,)."""
    try:
        if model.kind == "ensemble":
            from silos.ensemble import load_ensemble

            return load_ensemble(payload).predict_proba(X)
        if model.kind in TREE_KINDS:
            from silos.tree_trainer import predict_trees

            return predict_trees(TreeSpec.model_validate(model.spec["trees"]), payload, X)
        from silos.trainer import predict

        spec = ModelSpec.model_validate(model.spec["model"])
        arrays, _ = tensors.decode_expected(payload, param_shapes(spec))
        return predict(spec, arrays, X)
    except (ValueError, ModelError) as exc:  # TensorFormatError, ValidationError: ValueErrors
        raise PredictError(
            f"run {model.run_id} model v{model.model_version} ({model.kind}) does not predict: "
            f"{exc}"
        ) from exc


def prediction_columns(contract: Contract, scores: np.ndarray) -> pd.DataFrame:
    """binary: `probability` of the positive class and `label` (1 positive, 0 not);
    multiclass: `probability_<class>` per class and `label` (the class); regression:
    `prediction`."""
    if contract.task == "regression":
        return pd.DataFrame({"prediction": scores})
    if contract.task == "binary":
        return pd.DataFrame({"probability": scores, "label": (scores >= THRESHOLD).astype(int)})
    classes = list(contract.classes)
    out = pd.DataFrame({f"probability_{c}": scores[:, i] for i, c in enumerate(classes)})
    out["label"] = [classes[i] for i in np.argmax(scores, axis=1)]
    return out


def kept_columns(path: Path, table: pd.DataFrame, keep: Sequence[str]) -> pd.DataFrame:
    """The columns to copy to the output as they are (an id); FeatureError naming the file
    and the column when one is absent."""
    absent = [c for c in keep if c not in table.columns]
    if absent:
        raise FeatureError(
            f"{path}: --keep names column {absent[0]!r}, which the file does not have"
        )
    return table[list(keep)].reset_index(drop=True)


def predict_file(
    client: CoordinatorClient, model: RunModel, payload: bytes, data: Path, keep: Sequence[str]
) -> Predicted:
    """Predict every row of `data` with `payload`, the run's model `model` describes.

    Raises
    ------
    RegistryError
        The bytes do not hash to the ledger's sha256 (naming run and version).
    PredictError
        The contract or the model does not fit (see `run_contract`, `run_pipeline`).
    DataError, FeatureError
        The file cannot be read, or a column is absent, unseen or missing (naming the file and
        the column).
    """
    from flows.model_registry import check_bytes
    from silos.data import load_table

    check_bytes(model, payload)  # first: nothing is read from a model that was altered
    contract = run_contract(client, model)
    pipeline = run_pipeline(model, contract, run_statistics(client, model, contract))
    table = load_table(data)
    X = encode_rows(data, table, pipeline)
    scores = model_scores(model, payload, X)
    out = pd.concat([kept_columns(data, table, keep), prediction_columns(contract, scores)], axis=1)
    clash = [c for c in keep if list(out.columns).count(c) > 1]
    if clash:
        raise FeatureError(f"--keep {clash[0]!r} has the name of a prediction column")
    return Predicted(out, model)
