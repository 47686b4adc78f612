"""The encoded feature names, from the data contract alone.

The silos' feature pipeline names its columns by this rule
(`silos.features.FeaturePipeline.feature_names`), and the service names the features of the
secure-hist models it builds itself by it too (it cannot import the silos' code).
"""

from __future__ import annotations

from schemas.contracts.loader import Column, Contract


def encoded_feature_names(contract: Contract) -> tuple[str, ...]:
    """One name per encoded feature, in column order: ``<name>`` and ``<name>__missing`` for a
    numeric column, ``<name>=<level>`` (and ``<name>=missing``) for a discrete one."""
    return tuple(name for col in contract.feature_columns for name in _column_names(col))


def _column_names(col: Column) -> list[str]:
    missing = col.allows_missing
    if col.type == "numeric":
        return [col.name] + ([f"{col.name}__missing"] if missing else [])
    boolean = col.type == "boolean"
    names = [f"{col.name}={str(level).lower() if boolean else level}" for level in col.levels]
    return names + ([f"{col.name}=missing"] if missing else [])
