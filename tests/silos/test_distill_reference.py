"""The distillation reference set: the same rows at every silo, inside the contract, no real row."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas.contracts import Contract, load_contract
from schemas.contracts.stats import FederationStats
from schemas.distill import reference_seed
from silos.distill_reference import reference_features, reference_table
from silos.features import FeaturePipeline
from silos.federated_stats import local_moments

TOY = Contract.model_validate(
    {
        "name": "toy",
        "version": "1",
        "min_rows": 1,
        "features": ["x", "n", "colour", "flag"],
        "pipeline": {"numeric": "standardize"},
        "target": {"column": "label", "positive_if": {"op": "==", "value": 1}, "values": [0, 1]},
        "columns": [
            {
                "name": "x",
                "type": "numeric",
                "range": [0, 100],
                "missing_sentinels": [0],
                "impute": 50,
                "max_missing_fraction": 0.5,
            },
            {"name": "n", "type": "numeric", "range": [1, 5]},  # integer-valued at the silos
            {"name": "colour", "type": "categorical", "categories": ["red", "blue", "green"]},
            {"name": "flag", "type": "boolean"},
            {"name": "label", "type": "numeric", "range": [0, 1]},
        ],
    }
)
FEATURES = ["x", "n", "colour", "flag"]


@st.composite
def silo_tables(draw: st.DrawFn) -> pd.DataFrame:
    """A silo's training rows under TOY, its numeric values often on round numbers."""
    n = draw(st.integers(1, 40))
    x = st.one_of(st.integers(1, 100).map(float), st.floats(0.5, 100, allow_nan=False))
    return pd.DataFrame(
        {
            "x": draw(st.lists(x, min_size=n, max_size=n)),
            "n": draw(st.lists(st.integers(1, 5).map(float), min_size=n, max_size=n)),
            "colour": draw(
                st.lists(st.sampled_from(["red", "blue", "green"]), min_size=n, max_size=n)
            ),
            "flag": draw(st.lists(st.booleans(), min_size=n, max_size=n)),
            "label": draw(st.lists(st.integers(0, 1), min_size=n, max_size=n)),
        }
    )


def _stats(tables: list[pd.DataFrame]) -> FederationStats:
    summed = sum(local_moments(t, TOY) for t in tables)
    return FederationStats.from_summed_moments(summed, TOY)


@settings(max_examples=40, deadline=None)
@given(
    tables=st.lists(silo_tables(), min_size=1, max_size=4),
    run_id=st.text("abcdef0123456789", min_size=1, max_size=32),
    n_rows=st.integers(1, 200),
)
def test_reference_rows_respect_the_contract_and_hold_no_training_row(
    tables: list[pd.DataFrame], run_id: str, n_rows: int
) -> None:
    stats = _stats(tables)
    ref = reference_table(TOY, stats, n_rows, reference_seed(run_id))
    assert list(ref.columns) == FEATURES and len(ref) == n_rows
    assert not ref.isna().any().any()
    for name in ("x", "n"):
        low, high = TOY.column(name).range  # type: ignore[misc]
        assert ((ref[name] >= low) & (ref[name] <= high)).all()
    assert (ref["x"] != 0).all()  # never the "not measured" sentinel
    assert set(ref["colour"]) <= {"red", "blue", "green"}
    assert set(ref["flag"]) <= {True, False}
    real = {tuple(row) for t in tables for row in t[FEATURES].itertuples(index=False)}
    assert not real & {tuple(row) for row in ref.itertuples(index=False)}
    X = reference_features(TOY, stats, n_rows, reference_seed(run_id))
    width = FeaturePipeline.from_contract(TOY, stats).n_features
    assert X.shape == (n_rows, width) and np.isfinite(X).all()


def test_every_silo_builds_the_same_set_and_another_run_another() -> None:
    contract = load_contract("heart_disease")
    a = reference_features(contract, None, 128, reference_seed("run-a"))
    again = reference_features(contract, None, 128, reference_seed("run-a"))
    other = reference_features(contract, None, 128, reference_seed("run-b"))
    np.testing.assert_array_equal(a, again)
    assert not np.array_equal(a, other)


def test_draws_follow_the_federation_statistics() -> None:
    """Numeric features centre on the federation mean, not the middle of the range."""
    low_rows = pd.DataFrame(
        {"x": [10.0, 12.0, 14.0] * 20, "n": [1.0] * 60, "colour": ["red"] * 60,
         "flag": [True] * 60, "label": [0] * 60}
    )  # fmt: skip
    ref = reference_table(TOY, _stats([low_rows]), 2000, seed=7)
    assert abs(ref["x"].mean() - 12.0) < 2.0  # federation mean 12 of a 0..100 range
    uniform = reference_table(TOY, None, 2000, seed=7)
    assert abs(uniform["x"].mean() - 50.0) < 5.0  # no statistics: the whole range


def test_a_reference_set_needs_rows() -> None:
    with pytest.raises(ValueError, match="at least one row"):
        reference_table(TOY, None, 0, seed=1)
