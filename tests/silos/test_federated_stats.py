"""Federation statistics from summed per-silo moments, and the pipeline that standardises."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas.contracts import Contract, ContractError, load_contract
from schemas.contracts.stats import FederationStats, moments_length, stats_columns
from silos.exceptions import FeatureError
from silos.features import FeaturePipeline
from silos.federated_stats import local_moments

TOY = Contract.model_validate(
    {
        "name": "toy",
        "version": "1",
        "min_rows": 1,
        "features": ["x", "y", "colour"],
        "pipeline": {"numeric": "standardize"},
        "target": {"column": "label", "positive_if": {"op": "==", "value": 1}, "values": [0, 1]},
        "columns": [
            {
                "name": "x",
                "type": "numeric",
                "range": [-100, 100],
                "missing_sentinels": [-999],
                "impute": 0,
                "max_missing_fraction": 0.5,
            },
            {"name": "y", "type": "numeric", "range": [0, 10]},
            {"name": "colour", "type": "categorical", "categories": ["red", "blue"]},
            {"name": "label", "type": "numeric", "range": [0, 1]},
        ],
    }
)

xs = st.one_of(st.floats(-150, 150, allow_nan=False), st.just(-999.0), st.just(np.nan))
ys = st.floats(0, 10, allow_nan=False)


def toy_frame(x: list[float], y: list[float]) -> pd.DataFrame:
    n = len(x)
    return pd.DataFrame({"x": x, "y": y, "colour": ["red"] * n, "label": [0] * n})


@st.composite
def federations(draw: st.DrawFn) -> list[pd.DataFrame]:
    silos = []
    for _ in range(draw(st.integers(1, 5))):
        n = draw(st.integers(1, 30))
        x = draw(st.lists(xs, min_size=n, max_size=n))
        y = draw(st.lists(ys, min_size=n, max_size=n))
        silos.append(toy_frame(x, y))
    return silos


@settings(max_examples=80, deadline=None)
@given(silos=federations())
def test_summed_moments_give_the_pooled_mean_and_std(silos: list[pd.DataFrame]) -> None:
    pooled = pd.concat(silos, ignore_index=True)
    x = pooled["x"].replace(-999.0, np.nan).dropna().clip(-100, 100).to_numpy()
    if x.size == 0:
        return  # no present x anywhere: covered by the next test
    total = sum(local_moments(df, TOY) for df in silos)
    stats = FederationStats.from_summed_moments(total, TOY)
    col = stats.column("x")
    assert col.count == x.size
    assert col.mean_in_unit == pytest.approx(x.mean(), abs=1e-9)
    # the variance, not the std: summed moments carry an absolute error of a few ulps of the
    # sum of squares, which a square root near zero blows up (std 1.5e-6 for 2e-12 once)
    assert col.std_in_unit**2 == pytest.approx(x.var(), abs=1e-9)
    y = pooled["y"].to_numpy()
    assert stats.column("y").mean_in_unit == pytest.approx(y.mean(), abs=1e-9)
    assert stats.column("y").std_in_unit ** 2 == pytest.approx(y.var(), abs=1e-9)


@settings(max_examples=40, deadline=None)
@given(silos=federations())
def test_moments_are_bounded_by_the_row_count(silos: list[pd.DataFrame]) -> None:
    """So a fixed-point secure-aggregation quantizer with clip = max rows cannot overflow."""
    for df in silos:
        moments = local_moments(df, TOY)
        assert moments.shape == (moments_length(TOY),) and moments.dtype == np.float64
        assert (moments >= 0).all() and (moments <= len(df)).all()


def test_sentinels_and_empty_cells_are_not_counted() -> None:
    moments = local_moments(toy_frame([1.0, -999.0, np.nan, 100.0], [1, 2, 3, 4]), TOY)
    assert stats_columns(TOY) == ("x", "y")
    assert moments[0] == 2  # x: 1 and 100 only
    assert moments[1] == pytest.approx((101 / 200) + 1.0)  # range-scaled: 0.505 and 1.0


def test_a_column_missing_everywhere_has_no_mean() -> None:
    moments = local_moments(toy_frame([np.nan, -999.0], [1, 2]), TOY)
    with pytest.raises(ContractError, match="'x' has no present value"):
        FederationStats.from_summed_moments(moments, TOY)


def test_a_vector_of_the_wrong_length_is_refused() -> None:
    with pytest.raises(ContractError, match="expected \\(6,\\)"):
        FederationStats.from_summed_moments(np.zeros(9), TOY)


def test_text_in_a_numeric_feature_is_refused() -> None:
    df = toy_frame([1.0, 2.0], [1, 2]).astype({"x": object})
    df.loc[0, "x"] = "lots"
    with pytest.raises(FeatureError, match="'x' is numeric"):
        local_moments(df, TOY)


def test_standardised_features_have_federation_mean_0_and_std_1() -> None:
    silos = [
        toy_frame([10.0, 20.0, np.nan], [1.0, 2.0, 3.0]),
        toy_frame([-50.0, 80.0, -999.0, 5.0], [9.0, 9.5, 0.0, 4.0]),
    ]
    stats = FederationStats.from_summed_moments(sum(local_moments(d, TOY) for d in silos), TOY)
    pipe = FeaturePipeline.from_contract(TOY, stats)
    X = np.concatenate([pipe.encode(d) for d in silos]).astype(np.float64)
    x, x_missing = X[:, pipe.feature_names.index("x")], X[:, pipe.feature_names.index("x__missing")]
    present = x_missing == 0
    assert x[present].mean() == pytest.approx(0, abs=1e-6)
    assert x[present].std() == pytest.approx(1, abs=1e-5)
    assert (x[~present] == 0).all()  # imputed with the federation mean
    y = X[:, pipe.feature_names.index("y")]
    assert y.mean() == pytest.approx(0, abs=1e-6) and y.std() == pytest.approx(1, abs=1e-5)
    assert pipe.feature_names == FeaturePipeline.from_contract(TOY).feature_names


def test_without_stats_the_pipeline_keeps_range_scaling() -> None:
    X = FeaturePipeline.from_contract(TOY).encode(toy_frame([0.0, np.nan], [5.0, 10.0]))
    np.testing.assert_allclose(X[:, 0], [0.5, 0.5])  # x: 0 is mid-range; impute 0
    np.testing.assert_allclose(X[:, 2], [0.5, 1.0])  # y


def test_stats_of_another_contract_are_refused() -> None:
    stats = FederationStats.from_summed_moments(local_moments(toy_frame([1.0], [1.0]), TOY), TOY)
    other = TOY.model_copy(update={"version": "2"})
    with pytest.raises(FeatureError, match="rerun the statistics round"):
        FeaturePipeline.from_contract(other, stats)


def test_credit_contract_asks_for_federation_statistics() -> None:
    credit = load_contract("credit_default")
    assert credit.pipeline.needs_federation_stats
    assert not load_contract("heart_disease").pipeline.needs_federation_stats
    assert len(stats_columns(credit)) == 20
