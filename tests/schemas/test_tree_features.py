"""The encoded feature names (`schemas.tree_features`), which the silos' pipeline and the
service's secure-hist models both use: one name per encoded column, in the contract's order,
for every column kind (numeric with and without missing values, categorical, boolean)."""

from __future__ import annotations

import pytest

from schemas.contracts.loader import CONTRACTS_DIR, load_contract
from schemas.tree_features import encoded_feature_names
from silos.features import FeaturePipeline

SHIPPED = sorted(p.stem for p in CONTRACTS_DIR.glob("*.toml"))


def test_each_column_kind_is_named_by_the_rule() -> None:
    names = encoded_feature_names(load_contract("heart_disease"))
    assert names[:7] == (
        "age",  # numeric, never missing: one column
        "sex=Female",  # categorical: one per level, in the contract's order
        "sex=Male",
        "cp=typical angina",
        "cp=atypical angina",
        "cp=non-anginal",
        "cp=asymptomatic",
    )
    assert names[7:14] == (
        "trestbps",  # numeric that may be missing: its indicator follows
        "trestbps__missing",
        "chol",
        "chol__missing",
        "fbs=false",  # boolean: lower-case levels, then missing
        "fbs=true",
        "fbs=missing",
    )


@pytest.mark.parametrize("name", SHIPPED)
def test_one_unique_name_per_encoded_feature(name: str) -> None:
    contract = load_contract(name)
    names = encoded_feature_names(contract)
    assert len(set(names)) == len(names)
    pipeline = FeaturePipeline.from_contract(contract)
    assert names == pipeline.feature_names and len(names) == pipeline.n_features
