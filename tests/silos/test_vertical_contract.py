"""Each party of a vertical run checks its own columns against its own contract."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from schemas.vertical_contract import (
    VerticalContractError,
    check_table,
    load_vertical_contract,
)
from silos.vertical.agent_role import RoleError, load_checked


def bureau_frame(n: int = 150) -> pd.DataFrame:
    rng = np.random.default_rng(1)
    df = pd.DataFrame(
        {
            "id": np.arange(n),
            "SEX": rng.integers(0, 2, n),
            "EDUCATION": rng.integers(0, 5, n),
            "MARRIAGE": rng.integers(0, 4, n),
            "AGE": rng.integers(21, 70, n),
        }
    )
    for i in range(1, 7):
        df[f"BILL_AMT{i}"] = rng.normal(50_000, 20_000, n)
    return df


def test_shipped_contracts_split_the_credit_columns() -> None:
    bank = load_vertical_contract("credit_vertical_bank")
    bureau = load_vertical_contract("credit_vertical_bureau")
    assert bank.label == "default-payment-next-month" and bureau.label is None
    assert not set(bank.features) & set(bureau.features)
    assert len(bank.features) + len(bureau.features) == 23  # the credit data's features


def test_good_table_passes_and_keeps_contract_order(tmp_path: Path) -> None:
    contract = load_vertical_contract("credit_vertical_bureau")
    df = bureau_frame()
    assert check_table(df, contract, "bureau.csv") == []
    path = tmp_path / "bureau.csv"
    df[df.columns[::-1]].to_csv(path, index=False)  # columns in another order
    data = load_checked(path, contract)
    assert data.columns == contract.features and data.y is None
    assert np.array_equal(data.X[:, 3], df["AGE"].to_numpy())


def test_every_problem_names_file_and_column(tmp_path: Path) -> None:
    contract = load_vertical_contract("credit_vertical_bureau")
    df = bureau_frame().drop(columns=["MARRIAGE"])
    df.loc[3, "AGE"] = 7
    df.loc[4, "BILL_AMT2"] = np.nan
    df.loc[5, "id"] = 0
    df["PAY_0"] = 0  # a bank column at the bureau
    problems = check_table(df, contract, "bureau.csv")
    text = "\n".join(problems)
    assert "column 'MARRIAGE' is missing" in text
    assert "column 'AGE' has 1 values outside [18, 100]" in text
    assert "column 'BILL_AMT2' has 1 missing" in text
    assert "repeats id '0'" in text
    assert "'PAY_0' is not in contract credit_vertical_bureau" in text
    assert all(p.startswith("bureau.csv: ") for p in problems)
    path = tmp_path / "bureau.csv"
    df.to_csv(path, index=False)
    with pytest.raises(RoleError, match="5 problem"):
        load_checked(path, contract)


def test_label_and_contract_file_errors(tmp_path: Path) -> None:
    bank = load_vertical_contract("credit_vertical_bank")
    df = pd.DataFrame({"id": range(100), "default-payment-next-month": [2] * 100})
    for c in bank.features:
        df[c] = 0
    assert any("values not 0/1" in p for p in check_table(df, bank, "bank.csv"))
    bad = tmp_path / "x.toml"
    bad.write_text('name = "x"\nversion = "1"\nid_column = "id"\ncolumns = []\n')
    with pytest.raises(VerticalContractError, match="x.toml: columns"):
        load_vertical_contract(bad)


def test_a_party_table_is_read_as_a_horizontal_silos_is(tmp_path: Path) -> None:
    """A ';'-delimited export or a column named twice was read by pandas as one column or as
    'AGE.1' and reported as contract problems about columns the file does not have."""
    contract = load_vertical_contract("credit_vertical_bureau")
    semi = tmp_path / "semi.csv"
    bureau_frame().to_csv(semi, index=False, sep=";")
    with pytest.raises(RoleError, match=r"semi\.csv: the header reads as one column .*';'"):
        load_checked(semi, contract)
    twice = tmp_path / "twice.csv"
    df = bureau_frame()
    df.insert(1, "AGE", df.pop("AGE"), allow_duplicates=True)
    df.insert(2, "AGE", df["AGE"], allow_duplicates=True)
    df.to_csv(twice, index=False)
    with pytest.raises(RoleError, match=r"twice\.csv: the header names 'AGE' more than once"):
        load_checked(twice, contract)
    with pytest.raises(RoleError, match=r"absent\.csv"):
        load_checked(tmp_path / "absent.csv", contract)
