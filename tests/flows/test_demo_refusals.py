"""`fedsilo demo` options that do not fit together are a usage error (exit 2) on one line
naming them, refused before the workspace is touched; a --strategy that a run of per-silo
models would drop is refused, as `fedsilo train` refuses it."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from flows.cli import app
from flows.cli.errors import USAGE
from flows.demo import DemoOptions, demo_spec
from flows.demo_distill import distilled
from flows.demo_ensemble import ensembled
from flows.demo_refusals import DemoOptionError
from schemas.contracts.loader import load_contract
from schemas.specs import StrategySpec
from silos.features import FeaturePipeline

HEART_FEATURES = FeaturePipeline.from_contract(load_contract("heart_disease")).n_features
SILOS = ["cleveland", "hungary", "switzerland", "va_long_beach"]


@pytest.mark.parametrize(
    ("args", "named", "said"),
    [
        (["--async", "--ensemble"], "--ensemble/--async", "not supported with asynchronous"),
        (["--ensemble", "--dp"], "--ensemble/--dp", "not supported with differential privacy"),
        (["--distill", "--plain"], "--distill/--plain", "secure_aggregation disabled"),
        (
            ["--personalize", "ditto", "--model", "xgboost"],
            "--personalize/--model",
            "tree runs personalize by continued boosting",
        ),
        (["--ensemble", "--strategy", "fedprox"], "--ensemble/--strategy", "no global model"),
        (["--distill", "--strategy", "fedavg"], "--distill/--strategy", "no global model"),
        (["--strategy", "scaffold", "--dp"], "--strategy/--dp", "not supported with differential"),
    ],
)
def test_options_that_do_not_fit_are_a_one_line_usage_error_naming_them(
    tmp_path: Path, args: list[str], named: str, said: str
) -> None:
    workspace = tmp_path / "ws"
    result = CliRunner().invoke(app, ["demo", "--workspace", str(workspace), *args])
    assert result.exit_code == USAGE, result.output
    lines = [line for line in result.output.splitlines() if "Invalid value" in line]
    assert len(lines) == 1 and f"Invalid value for {named}: " in lines[0], result.output
    assert said in lines[0]
    for raw in ("validation error", "input_value", "errors.pydantic.dev", "type=value_error"):
        assert raw not in result.output
    assert not workspace.exists()  # refused before anything was made


@pytest.mark.parametrize("kind", ["ensemble", "distill"])
def test_a_strategy_a_run_of_per_silo_models_would_drop_is_refused(
    tmp_path: Path, kind: str
) -> None:
    opts = DemoOptions(tmp_path, strategy="fedprox", **{kind: True})  # type: ignore[arg-type]
    with pytest.raises(DemoOptionError) as refused:
        demo_spec(opts, HEART_FEATURES)
    assert refused.value.options == (f"--{kind}", "--strategy")
    # without --strategy the dataset's own strategy gives way to plain averaging, as before
    per_silo = ensembled if kind == "ensemble" else distilled
    spec = per_silo(demo_spec(DemoOptions(tmp_path, **{kind: True}), HEART_FEATURES), SILOS)  # type: ignore[arg-type]
    assert spec.strategy == StrategySpec() and getattr(spec, kind) is not None
