"""The data steward's contract fields: unique, identifier columns, duplicate rows, class
presence, reference statistics and on_drift; how they parse, what they refuse, and the GX
expectations they add to the suite."""

from __future__ import annotations

import pytest

from schemas.contracts import ContractError, load_contract
from schemas.contracts.gx_suite import build_suite
from schemas.contracts.loader import load_contract_text

BASE = """
name = "toy"
version = "1"
min_rows = 10
features = ["x", "colour"]
{extra}

[target]
column = "label"
positive_if = {{ op = "==", value = 1 }}

[[columns]]
name = "patient_id"
type = "{id_type}"
unique = true

[[columns]]
name = "x"
type = "numeric"
range = [0, 10]
{x_extra}

[[columns]]
name = "colour"
type = "categorical"
categories = ["red", "blue"]
{colour_extra}

[[columns]]
name = "label"
type = "numeric"
range = [0, 1]
"""


def toml(
    extra: str = "", id_type: str = "identifier", x_extra: str = "", colour_extra: str = ""
) -> str:
    return BASE.format(extra=extra, id_type=id_type, x_extra=x_extra, colour_extra=colour_extra)


def test_new_fields_parse_with_their_defaults() -> None:
    contract = load_contract_text(
        toml(
            x_extra="reference = { mean = 5.0, std = 2.0 }",
            colour_extra='reference = { frequencies = { "red" = 0.6, "blue" = 0.4 } }',
        ),
        "toy.toml",
    )
    assert contract.column("patient_id").unique and contract.column("patient_id").type == (
        "identifier"
    )
    assert not contract.allow_duplicate_rows and contract.min_class_rows == 5
    assert contract.on_drift == "error"
    ref = contract.column("x").reference
    assert ref is not None and ref.mean_bounds == (3.0, 7.0)
    assert ref.std_bounds == (0.5, 3.5)  # default std_tolerance 0.75 reference stds


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (toml(x_extra="reference = { mean = 5.0 }"), r"column 'x' \(columns\[1\]\).*mean and std"),
        (
            toml(x_extra='reference = { frequencies = { "a" = 1.0 } }'),
            "numeric column 'x': reference takes mean and std",
        ),
        (
            toml(colour_extra='reference = { frequencies = { "green" = 0.5 } }'),
            r"not its categories: \['green'\]",
        ),
        (
            toml(colour_extra='reference = { frequencies = { "red" = 0.9, "blue" = 0.9 } }'),
            "add up to more than 1",
        ),
        (toml(colour_extra="reference = { mean = 1.0, std = 1.0 }"), "takes frequencies"),
        (toml(x_extra="reference = { mean = 5.0, std = 0 }"), "std"),
        (toml(extra="min_class_rows = 0"), "min_class_rows"),
        (toml(extra='on_drift = "maybe"'), "on_drift"),
        (
            toml().replace('features = ["x", "colour"]', 'features = ["x", "patient_id"]'),
            "identifier column 'patient_id' cannot be a feature",
        ),
        (toml().replace('column = "label"', 'column = "patient_id"'), "cannot be the target"),
        (toml().replace("unique = true", "range = [0, 9]"), "takes no range"),
    ],
)
def test_bad_check_fields_are_refused_naming_the_key(text: str, message: str) -> None:
    with pytest.raises(ContractError, match=message) as info:
        load_contract_text(text, "toy.toml")
    assert "toy.toml" in str(info.value)


def test_suite_gains_uniqueness_and_reference_expectations() -> None:
    contract = load_contract_text(
        toml(x_extra="reference = { mean = 5.0, std = 2.0, mean_tolerance = 0.5 }"), "toy.toml"
    )
    kinds = {
        (e.expectation_type, getattr(e, "column", None)) for e in build_suite(contract).expectations
    }
    assert ("expect_column_values_to_be_unique", "patient_id") in kinds
    assert ("expect_column_mean_to_be_between", "x") in kinds
    assert ("expect_column_stdev_to_be_between", "x") in kinds
    # an identifier column has no value set and no type list: only missing and uniqueness
    assert not any(col == "patient_id" and "in_set" in kind for kind, col in kinds)
    mean = next(
        e
        for e in build_suite(contract).expectations
        if e.expectation_type == "expect_column_mean_to_be_between"
    )
    assert (mean.min_value, mean.max_value) == (4.0, 6.0)
    assert str(mean.severity.value) == "critical"


def test_on_drift_warn_makes_the_reference_expectations_warnings() -> None:
    contract = load_contract_text(
        toml(extra='on_drift = "warn"', x_extra="reference = { mean = 5.0, std = 2.0 }"),
        "toy.toml",
    )
    stats = [
        e
        for e in build_suite(contract).expectations
        if e.expectation_type.endswith(("mean_to_be_between", "stdev_to_be_between"))
    ]
    assert len(stats) == 2 and all(str(e.severity.value) == "warning" for e in stats)
    others = [e for e in build_suite(contract).expectations if e not in stats]
    assert all(str(e.severity.value) == "critical" for e in others)


def test_shipped_contracts_declare_their_ids_unique_and_references() -> None:
    heart, credit = load_contract("heart_disease"), load_contract("credit_default")
    assert heart.column("id").unique and credit.column("ID").unique
    assert heart.column("age").reference is not None
    assert credit.column("EDUCATION").reference is not None
    assert credit.min_class_rows >= heart.min_class_rows >= 5
