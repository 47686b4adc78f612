"""Data contracts: one TOML file per dataset, loaded into pydantic models."""

from schemas.contracts.loader import (
    Column,
    Contract,
    ContractError,
    PositiveRule,
    Target,
    Task,
    load_contract,
    load_contract_file,
    load_contract_text,
)

__all__ = [
    "Column",
    "Contract",
    "ContractError",
    "PositiveRule",
    "Target",
    "Task",
    "load_contract",
    "load_contract_file",
    "load_contract_text",
]
