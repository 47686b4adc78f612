"""`fedsilo demo --async`: FedBuff buffers of n-1 in the run's spec and the coordinator flow's
parameters; combinations it cannot run are refused, naming the flag."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest
from typer.testing import CliRunner

from flows.cli import app
from flows.coordinator import federated_training
from flows.demo import DemoOptions, demo_spec, flow_parameters
from flows.exceptions import DemoError
from schemas.contracts.loader import load_contract
from silos.features import FeaturePipeline

N_FEATURES = FeaturePipeline.from_contract(load_contract("heart_disease")).n_features


def test_async_demo_spec_buffers_all_but_one_silo(tmp_path: Path) -> None:
    sync = demo_spec(DemoOptions(tmp_path), N_FEATURES, 4)
    spec = demo_spec(DemoOptions(tmp_path, asynchronous=True), N_FEATURES, 4)
    assert sync.asynchronous is None
    assert spec.asynchronous is not None and spec.asynchronous.buffer_size == 3
    assert spec.secure_aggregation.enabled and spec.min_silos <= 3  # secure, as the sync demo
    assert spec.rounds == -(-sync.rounds * 4 // 3)  # about as many updates as the sync demo
    params = flow_parameters(spec, "http://127.0.0.1:1", tmp_path / "t", tmp_path, 1.0)
    inspect.signature(federated_training.fn).bind(**params)
    assert params["asynchronous"] == spec.asynchronous
    assert params["secure_aggregation"] == spec.secure_aggregation


def test_async_demo_buffers_of_two_silos_at_least_when_secure(tmp_path: Path) -> None:
    secure = demo_spec(DemoOptions(tmp_path, asynchronous=True), N_FEATURES, 2)
    assert secure.asynchronous is not None and secure.asynchronous.buffer_size == 2
    plain = demo_spec(DemoOptions(tmp_path, asynchronous=True, plain=True), N_FEATURES, 2)
    assert not plain.secure_aggregation.enabled
    assert plain.asynchronous is not None and plain.asynchronous.buffer_size == 1


def test_async_demo_refuses_dp_and_trees(tmp_path: Path) -> None:
    with pytest.raises(DemoError, match="drop --dp or --async"):
        demo_spec(DemoOptions(tmp_path, asynchronous=True, dp=True), N_FEATURES, 4)
    result = CliRunner().invoke(
        app, ["demo", "--async", "--model", "xgboost", "--workspace", str(tmp_path / "w")]
    )
    assert result.exit_code != 0 and "--async buffers PyTorch updates" in result.output
