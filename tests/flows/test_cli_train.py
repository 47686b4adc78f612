"""`fedsilo train` for tree models and `fedsilo vertical train` refuse bad hyperparameters by name
before contacting anyone."""

from __future__ import annotations

from typing import Any

import pytest
from typer.testing import CliRunner

import flows.vertical
from flows.cli import app
from schemas.vertical import VerticalParams

BASE = ["train", "--federation", "f", "--dataset", "d", "--n-features", "5"]


def _run(*extra: str):  # type: ignore[no-untyped-def]
    return CliRunner().invoke(app, [*BASE, *extra, "--service-url", "http://127.0.0.1:9"])


def test_unknown_tree_parameter_is_named() -> None:
    result = _run("--model", "xgboost", "--tree-param", "max_dept=3")
    assert result.exit_code == 2
    assert "max_dept" in result.output and "max_depth" in result.output


def test_out_of_range_tree_parameter_and_bad_mode_are_refused() -> None:
    result = _run("--model", "lightgbm", "--tree-param", "num_leaves=1")
    assert result.exit_code == 2 and "num_leaves" in result.output
    result = _run("--model", "lightgbm", "--mode", "collective")
    assert result.exit_code == 2 and "collective" in result.output
    result = _run("--model", "xgboost", "--tree-param", "max_depth")
    assert result.exit_code == 2 and "KEY=VALUE" in result.output


@pytest.mark.parametrize("option, value", [("--fine-cells", "8192"), ("--grad-bits", "2")])
def test_secure_hist_options_are_refused_in_other_modes(option: str, value: str) -> None:
    result = _run("--model", "xgboost", "--mode", "bagging", option, value)
    assert result.exit_code == 2 and option in result.output
    assert "secure-hist" in result.output


def test_fine_cells_is_at_least_max_bin() -> None:
    result = _run("--model", "xgboost", "--mode", "secure-hist", "--fine-cells", "64")
    assert result.exit_code == 2 and "fine_cells (64) must be at least" in result.output


def test_grad_bits_is_bounded_and_reaches_its_spec() -> None:
    from flows.cli.run_options import tree_spec

    result = _run("--model", "xgboost", "--mode", "secure-hist", "--grad-bits", "0")
    assert result.exit_code == 2 and "grad_bits" in result.output
    spec = tree_spec("xgboost", "secure-hist", 5, 3, [], None, 8192, 2)
    assert spec.secure_hist is not None
    assert (spec.secure_hist.fine_cells, spec.secure_hist.grad_bits) == (8192, 2)
    assert tree_spec("xgboost", "secure-hist", 5, 3, []).secure_hist.grad_bits is None  # type: ignore[union-attr]


def test_unknown_learning_rate_schedule_is_refused() -> None:
    result = _run("--lr-schedule", "warmup")
    assert result.exit_code == 2 and "--lr-schedule" in result.output
    assert "constant or cosine" in result.output


def test_scaffold_with_fedper_is_refused_by_name() -> None:
    result = _run("--strategy", "scaffold", "--personalize", "fedper")
    assert result.exit_code == 2 and "--strategy" in result.output
    assert "fedper keeps the output layer" in " ".join(result.output.split())


VERTICAL = ["vertical", "train", "--federation", "f", "--active", "bank"]


def _vertical(*extra: str):  # type: ignore[no-untyped-def]
    return CliRunner().invoke(app, [*VERTICAL, *extra, "--service-url", "http://127.0.0.1:9"])


def test_vertical_logreg_takes_two_parties_and_a_known_model() -> None:
    """Refused before a run exists (nothing listens on the service URL)."""
    three = ["--party", "bank", "--party", "bureau", "--party", "telco"]
    result = _vertical("--model", "logreg", *three)
    assert result.exit_code == 2
    assert "logistic regression takes two parties" in result.output
    assert "names 3" in result.output
    result = _vertical("--model", "forest", "--party", "bank", "--party", "bureau")
    assert result.exit_code == 2 and "secureboost or logreg" in result.output
    result = _vertical(
        "--model", "logreg", "--party", "bank", "--party", "b", "--batch-rows", "4096"
    )
    assert result.exit_code == 2 and "batch_rows" in result.output


def test_vertical_train_help_names_the_logreg_options() -> None:
    result = CliRunner().invoke(app, ["vertical", "train", "--help"])
    assert result.exit_code == 0
    for option in ("--model", "--epochs", "--batch-rows", "--learning-rate", "--l2"):
        assert option in result.output


def test_vertical_logreg_options_reach_the_run(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: dict[str, Any] = {}

    def flow(**kwargs: Any) -> dict[str, Any]:  # the flow, without Prefect or a service
        seen.update(kwargs)
        params = kwargs["params"].model_dump()
        run = {"run_id": "r1", "mode": "train", "status": "finished", "psi_size": 40}
        run |= {"trees": 0, "epochs": 5, "params": params, "model_digest": "d" * 64}
        return {"run": run, "psi": {}, "epochs": [{"epoch": 0, "steps": 3, "rows": 40}]}

    monkeypatch.setattr(flows.vertical, "vertical_training", flow)
    options = ["--epochs", "5", "--batch-rows", "64", "--learning-rate", "0.1", "--l2", "0"]
    parties = ["--party", "bank", "--party", "bureau", "--token", "t"]
    result = _vertical("--model", "logreg", *options, *parties)
    assert result.exit_code == 0, result.output
    assert seen["params"] == VerticalParams(
        model="logreg", epochs=5, batch_rows=64, learning_rate=0.1, l2=0.0
    )
    assert "epochs 5; model sha256" in result.output
    assert "epoch 0: 3 steps over 40 rows" in result.output
