"""Data contracts: one TOML file per dataset, loaded into pydantic models."""

from schemas.contracts.loader import (
    Column,
    Contract,
    ContractError,
    PositiveRule,
    Target,
    load_contract,
    load_contract_file,
)

__all__ = [
    "Column",
    "Contract",
    "ContractError",
    "PositiveRule",
    "Target",
    "load_contract",
    "load_contract_file",
]
