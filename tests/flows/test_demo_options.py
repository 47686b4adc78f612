"""`fedsilo demo --round-deadline-s N --ready-timeout-s N`: the flags parse, are checked, and
reach the run's spec and the coordinator flow's parameters."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest
from typer.testing import CliRunner

from flows.cli import app
from flows.coordinator import federated_training
from flows.demo import DemoOptions, demo_spec, flow_parameters
from flows.demo_config import DEMO_READY_TIMEOUT_S, DEMO_ROUND_DEADLINE_S
from schemas.contracts.loader import load_contract
from silos.features import FeaturePipeline

N_FEATURES = FeaturePipeline.from_contract(load_contract("heart_disease")).n_features


def test_round_deadline_reaches_the_spec_and_defaults_hold_under_load(tmp_path: Path) -> None:
    default = demo_spec(DemoOptions(workspace=tmp_path), N_FEATURES)
    assert default.round_deadline_s == DEMO_ROUND_DEADLINE_S >= 120.0  # not the old fixed 60 s
    assert demo_spec(DemoOptions(tmp_path, round_deadline_s=45), N_FEATURES).round_deadline_s == 45
    trees = DemoOptions(tmp_path, model="xgboost", round_deadline_s=75)
    assert demo_spec(trees, N_FEATURES).round_deadline_s == 75
    assert demo_spec(DemoOptions(tmp_path, model="xgboost"), N_FEATURES).round_deadline_s >= 180


def test_ready_timeout_and_deadline_reach_the_coordinator_flow(tmp_path: Path) -> None:
    spec = demo_spec(DemoOptions(tmp_path, round_deadline_s=33), N_FEATURES)
    params = flow_parameters(spec, "http://127.0.0.1:1", tmp_path / "t", tmp_path, 444.0)
    inspect.signature(federated_training.fn).bind(**params)  # every key is a flow parameter
    assert params["ready_timeout_s"] == 444.0 and params["round_deadline_s"] == 33
    assert params["show_progress"] is True
    assert DemoOptions(tmp_path).ready_timeout_s == DEMO_READY_TIMEOUT_S > 0


def test_demo_flags_parse_and_bad_values_are_named(tmp_path: Path) -> None:
    runner = CliRunner()
    taken = tmp_path / "not-a-demo"
    taken.mkdir()
    (taken / "keep.txt").write_text("someone's file")
    result = runner.invoke(
        app,
        ["demo", "--workspace", str(taken), "--round-deadline-s", "90", "--ready-timeout-s", "30"],
    )
    # the flags parsed; the demo itself then refuses a folder that is not its own
    assert result.exit_code == 1, result.output
    assert "not a demo workspace" in result.output
    assert (taken / "keep.txt").exists()
    for flag in ("--round-deadline-s", "--ready-timeout-s"):
        bad = runner.invoke(app, ["demo", "--workspace", str(taken), flag, "-5"])
        assert bad.exit_code == 2 and flag in bad.output, bad.output


def test_fine_cells_and_grad_bits_reach_a_secure_hist_spec_and_default_to_the_services_choice(
    tmp_path: Path,
) -> None:
    import pytest

    from flows.exceptions import DemoError

    hist = DemoOptions(tmp_path, model="xgboost", mode="secure-hist")
    assert demo_spec(hist, N_FEATURES).trees.secure_hist.fine_cells is None  # type: ignore[union-attr]
    fixed = DemoOptions(tmp_path, model="xgboost", mode="secure-hist", fine_cells=8192)
    assert demo_spec(fixed, N_FEATURES).trees.secure_hist.fine_cells == 8192  # type: ignore[union-attr]
    with pytest.raises(DemoError, match="--fine-cells"):
        demo_spec(DemoOptions(tmp_path, model="xgboost", fine_cells=8192), N_FEATURES)
    assert demo_spec(hist, N_FEATURES).trees.secure_hist.grad_bits is None  # type: ignore[union-attr]
    quantized = DemoOptions(tmp_path, model="xgboost", mode="secure-hist", grad_bits=2)
    assert demo_spec(quantized, N_FEATURES).trees.secure_hist.grad_bits == 2  # type: ignore[union-attr]
    with pytest.raises(DemoError, match="--grad-bits"):
        demo_spec(DemoOptions(tmp_path, model="xgboost", grad_bits=2), N_FEATURES)


def test_keep_running_reaches_the_vertical_demo(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import flows.demo_vertical

    seen: list[flows.demo_vertical.VerticalOptions] = []
    monkeypatch.setattr(flows.demo_vertical, "run_vertical_demo", lambda o, c: seen.append(o))
    runner = CliRunner()
    ws = str(tmp_path / "ws")
    for flags, kept in (([], False), (["--keep-running"], True)):
        result = runner.invoke(app, ["demo", "--vertical", "--workspace", ws, *flags])
        assert result.exit_code == 0, result.output
        assert seen[-1].keep_running is kept
