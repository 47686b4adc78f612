"""`fedsilo train` for tree models refuses bad hyperparameters by name before contacting anyone."""

from __future__ import annotations

from typer.testing import CliRunner

from flows.cli import app

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
