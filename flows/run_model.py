"""The run's model shape from the federation's data contract: input width, outputs, task.

`fedsilo train`, `fedsilo schedule` and the demo never ask for the feature width: it is the
width of the contract's feature pipeline, and the output layer follows the contract's task
(one logit, one logit per class, or one number; see `schemas.specs.model_spec_for_contract`).
"""

from __future__ import annotations

import logging

from flows.service_client import CoordinatorClient
from schemas.contracts.loader import Contract, ContractError, load_contract
from schemas.specs import ModelKind, ModelSpec, model_spec_for_contract
from silos.client_errors import NotFound
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


def run_contract(client: CoordinatorClient | None, federation: str, dataset: str) -> Contract:
    """The contract a run trains under: the federation's latest published version of `dataset`.

    A contract the federation has not published falls back to the example of that name shipped
    with the package (the demo's and the tests' federations), with a warning; neither is a
    `ContractError` naming `fedsilo contract publish`.
    """
    if client is not None:
        from flows.contract_publish import parse_published
        from flows.contract_publish import run_contract as published

        try:
            return parse_published(published(client, federation, dataset))
        except NotFound:
            pass
    try:
        contract = load_contract(dataset)
    except ContractError as exc:
        raise ContractError(
            f"federation {federation!r} has no published contract {dataset!r}, and no example of "
            f"that name ships with fedsilo; publish it first: fedsilo contract publish FILE "
            f"--federation {federation} ({exc})"
        ) from exc
    if client is not None:
        log.warning(
            "federation %s has not published contract %r: using the example shipped with fedsilo",
            federation,
            dataset,
        )
    return contract


def model_for_contract(
    kind: ModelKind, hidden: tuple[int, ...], contract: Contract, n_features: int | None = None
) -> ModelSpec:
    """The PyTorch model spec for `contract`: its width (checked against `n_features` when
    given), outputs and task; ValueError when the widths differ."""
    return model_spec_for_contract(kind, feature_width(contract, n_features), contract, hidden)
