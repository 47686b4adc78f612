"""`[data] test_path`: a silo trains on all of `path` and evaluates on its own held-out file,
which passes the same validation gate, is fingerprinted into the signed validation statement,
and is named in every error about it. Without it the silo splits `path` as before."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from schemas.contract_registry import PublishedContract, sign_contract
from silos import contract_store
from silos.config import SiloConfig, load_silo_config
from silos.exceptions import DataError, FeatureError
from silos.gate import fingerprint_table
from silos.local_data import local_train_table, prepare_local_data
from silos.round_gate import check_round, statement_payload

CONTRACT = """
name = "grades"
version = "1.0.0"
min_rows = 20
features = ["hours", "track"]

[target]
column = "grade"
task = "multiclass"
values = ["C", "B", "A"]

[[columns]]
name = "hours"
type = "numeric"
unit = "h/week"
range = [0, 40]

[[columns]]
name = "track"
type = "categorical"
categories = ["day", "evening"]

[[columns]]
name = "grade"
type = "categorical"
categories = ["C", "B", "A"]
"""


def rows(n: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    hours = rng.uniform(0, 40, n).round(4)  # no duplicate rows: the gate refuses them
    grade = np.array(["C", "B", "A"])[np.digitize(hours + rng.normal(0, 3, n), [13, 27])]
    return pd.DataFrame(
        {"hours": hours, "track": rng.choice(["day", "evening"], n), "grade": grade}
    )


def silo_toml(tmp_path: Path, test_path: str | None) -> SiloConfig:
    line = f'test_path = "{test_path}"\n' if test_path else ""
    (tmp_path / "silo.toml").write_text(
        '[silo]\nname = "school-a"\nfederation = "schools"\nworkspace = "ws"\n\n'
        f'[data]\npath = "train.csv"\ncontract = "grades"\n{line}\n'
        '[service]\nurls = ["http://127.0.0.1:9"]\n'
    )
    config = load_silo_config(tmp_path / "silo.toml")
    # the operator accepted the federation's signed contract (as `fedsilo silo accept-contract`)
    _, body = sign_contract(Ed25519PrivateKey.generate(), "schools", CONTRACT, source="grades")
    published = PublishedContract(
        **body.model_dump(), federation="schools", published_at=datetime.now(UTC)
    )
    contract_store.accept(config, published, by="test")
    return config


@pytest.fixture
def held_out(tmp_path: Path) -> SiloConfig:
    rows(120, 0).to_csv(tmp_path / "train.csv", index=False)
    rows(50, 1).to_parquet(tmp_path / "test.parquet", index=False)
    return silo_toml(tmp_path, "test.parquet")


def test_the_silo_trains_on_all_of_path_and_evaluates_on_the_test_file(
    held_out: SiloConfig, tmp_path: Path
) -> None:
    assert held_out.data.test_path == tmp_path / "test.parquet"  # resolved beside silo.toml
    data = prepare_local_data(held_out)
    test = pd.read_parquet(tmp_path / "test.parquet")
    assert (len(data.y_train), len(data.y_test)) == (120, 50)
    assert len(local_train_table(held_out)) == 120
    expected = test["grade"].map({"C": 0, "B": 1, "A": 2}).to_numpy()
    assert data.y_test.tolist() == expected.tolist()  # multiclass labels: class indices
    assert data.test_sha256 == fingerprint_table(test)
    assert data.data_sha256 == fingerprint_table(pd.read_csv(tmp_path / "train.csv"))


def test_without_test_path_the_table_is_split(tmp_path: Path) -> None:
    rows(120, 0).to_csv(tmp_path / "train.csv", index=False)
    data = prepare_local_data(silo_toml(tmp_path, None))
    assert (len(data.y_train), len(data.y_test)) == (90, 30)  # test_fraction 0.25
    assert data.test_sha256 is None


def test_the_gate_checks_the_test_file_and_signs_its_fingerprint(
    held_out: SiloConfig, tmp_path: Path
) -> None:
    gate = check_round(held_out)
    assert gate.summary.success, gate.summary.failed
    test_sha = fingerprint_table(pd.read_parquet(tmp_path / "test.parquet"))
    assert gate.summary.test_data_sha256 == test_sha
    assert gate.summary.test_n_rows == 50  # fewer than min_rows: the table minimum is for path
    payload = statement_payload("school-a", 1, gate.summary)
    assert payload["test_data_sha256"] == test_sha and payload["n_rows"] == 120

    broken = rows(50, 1)
    broken.loc[3, "hours"] = 90.0  # outside the contract's range, in the test file only
    broken.to_parquet(tmp_path / "test.parquet", index=False)
    summary = check_round(held_out).summary
    assert not summary.success
    assert [f.expectation for f in summary.failed] == [
        "test_path:expect_column_values_to_be_between"
    ]
    assert summary.failed[0].column == "hours" and "test_path:" in summary.reason()


def test_a_missing_or_foreign_test_file_is_named(held_out: SiloConfig, tmp_path: Path) -> None:
    bad = rows(50, 1)
    bad.loc[0, "grade"] = "A+"
    bad.to_parquet(tmp_path / "test.parquet", index=False)
    with pytest.raises(DataError, match=r"test\.parquet: target column 'grade'.*A\+"):
        prepare_local_data(held_out)
    bad = rows(50, 1).drop(columns="track")
    bad.to_parquet(tmp_path / "test.parquet", index=False)
    with pytest.raises(FeatureError, match=r"test\.parquet: the table has no column 'track'"):
        prepare_local_data(held_out)
    (tmp_path / "test.parquet").unlink()
    summary = check_round(held_out).summary
    assert not summary.success
    assert summary.failed[0].expectation == "test_path:read_table"
    assert "test.parquet" in summary.failed[0].detail


def test_an_edited_test_file_alone_changes_what_the_agent_compares(
    held_out: SiloConfig, tmp_path: Path
) -> None:
    """The agent reloads its data when the gate's fingerprints differ from the loaded data's
    (`silos.agent`): the same files agree, and a new test file alone makes them differ."""
    data, gate = prepare_local_data(held_out), check_round(held_out)
    assert data.fingerprints == gate.summary.fingerprints
    rows(60, 2).to_parquet(tmp_path / "test.parquet", index=False)  # training file untouched
    after = check_round(held_out).summary
    assert after.data_sha256 == data.data_sha256
    assert data.fingerprints != after.fingerprints
    assert prepare_local_data(held_out).fingerprints == after.fingerprints
