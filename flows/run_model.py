"""The run's model shape from the federation's data contract: input width, outputs, task.

`fedsilo train`, `fedsilo schedule` and the demo never ask for the feature width: it is the
width of the contract's feature pipeline, and the output layer follows the contract's task
(one logit, one logit per class, or one number; see `schemas.specs.model_spec_for_contract`).
"""

from __future__ import annotations

import logging

from flows.service_client import CoordinatorClient
from schemas.contracts.loader import Contract
from schemas.specs import ModelKind, ModelSpec, model_spec_for_contract
from silos.features import FeaturePipeline

log = logging.getLogger("fedsilo.coordinator")


def feature_width(contract: Contract, n_features: int | None = None) -> int:
    """The number of model inputs the contract's feature pipeline produces.

    `n_features`, when given (the old `--n-features`), must equal it: else ValueError.
    """
    width = FeaturePipeline.from_contract(contract).n_features
    if n_features is not None and n_features != width:
        raise ValueError(
            f"--n-features {n_features} differs from the {width} features contract "
            f"{contract.name!r} v{contract.version} yields; leave --n-features out"
        )
    return width


def run_contract(client: CoordinatorClient, federation: str, dataset: str) -> Contract:
    """The contract a run trains under: the federation's latest published version of `dataset`;
    ContractError naming `fedsilo contract publish` when it published none."""
    from flows.contract_publish import resolve_run_contract

    return resolve_run_contract(client, federation, dataset)[0]


def model_for_contract(
    kind: ModelKind, hidden: tuple[int, ...], contract: Contract, n_features: int | None = None
) -> ModelSpec:
    """The PyTorch model spec for `contract`: its width (checked against `n_features` when
    given), outputs and task; ValueError when the widths differ."""
    return model_spec_for_contract(kind, feature_width(contract, n_features), contract, hidden)
