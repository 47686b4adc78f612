"""`fedsilo train` and `fedsilo schedule` build the run's RunSpec from their options before
anything starts (a flow run, a work pool, a deployment) and refuse what no run could use with
exit 2, naming the option. Neither a service nor a Prefect server is contacted here: the
contract comes from the installed package and the flow and the deployment are stand-ins."""

from __future__ import annotations

import importlib
import os
import re
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest
from typer.testing import CliRunner

import flows.coordinator
import flows.schedule
from flows.cli import app
from flows.cli.errors import UNREACHABLE, USAGE
from flows.run_model import feature_width
from schemas.contracts.loader import load_contract
from schemas.specs import StrategySpec, TrainingSpec

train_module = importlib.import_module("flows.cli.train")  # flows.cli.train is the command
WIDTH = feature_width(load_contract("heart_disease"))  # the model's inputs under the contract
FLOW = flows.coordinator.federated_training  # the tests below stand in for it
FED = ["--federation", "heart", "--dataset", "heart_disease", "--service-url", "http://x:1"]


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> dict[str, list[Any]]:
    """What the commands reached: the contract, the flow, the work pool, the deployment."""
    seen: dict[str, list[Any]] = {"contract": [], "flow": [], "pool": [], "schedule": []}

    def contract(*args: Any) -> Any:
        seen["contract"].append(args)
        return load_contract("heart_disease")

    def flow(**kwargs: Any) -> dict[str, Any]:
        seen["flow"].append(kwargs)
        return {"run_id": "r1", "model_path": "m.pt", "model_sha256": "0" * 64}

    def schedule(**kwargs: Any) -> flows.schedule.Scheduled:
        seen["schedule"].append(kwargs)
        return flows.schedule.Scheduled(deployment_id=UUID(int=0), name="n", work_pool="p")

    monkeypatch.setattr(train_module, "service_contract", contract)
    monkeypatch.setattr(train_module, "check_prefect_api", lambda: None)
    monkeypatch.setattr(flows.coordinator, "federated_training", flow)
    monkeypatch.setattr(flows.schedule, "ensure_process_pool", seen["pool"].append)
    monkeypatch.setattr(flows.schedule, "schedule_training", schedule)
    return seen


def _train(*extra: str):  # type: ignore[no-untyped-def]
    return CliRunner().invoke(app, ["train", *FED, "--token", "t", *extra])


def _schedule(tmp_path: Path, *extra: str):  # type: ignore[no-untyped-def]
    token = tmp_path / "admin.token"
    token.write_text("t")
    os.chmod(token, 0o600)
    return CliRunner().invoke(app, ["schedule", *FED, "--token-file", str(token), *extra])


def _line(output: str) -> str:
    return " ".join(output.split())


@pytest.mark.parametrize(
    "options, named",
    [
        (["--lr", "-1"], "--lr"),
        (["--lr", "inf"], "--lr"),
        (["--strategy", "bogus"], "--strategy"),
        (["--rounds", "0"], "--rounds"),
        (["--min-silos", "-5"], "--min-silos"),
        (["--round-deadline-s", "-1"], "--round-deadline-s"),
        (["--ready-timeout-s", "inf"], "--ready-timeout-s"),
        (["--model", "mlp", "--hidden", "0"], "--hidden"),
    ],
)
def test_train_refuses_an_out_of_range_option_by_name_before_anything_runs(
    calls: dict[str, list[Any]], options: list[str], named: str
) -> None:
    result = _train(*options)
    assert result.exit_code == USAGE, result.output
    shown = _line(result.output)
    assert f"Invalid value for {named}:" in shown and "unexpected" not in shown
    assert calls["contract"] == [] and calls["flow"] == []  # refused offline, no flow run


def test_train_names_every_option_at_fault_on_one_line(calls: dict[str, list[Any]]) -> None:
    result = _train("--rounds", "0", "--min-silos", "-3", "--round-deadline-s", "-1")
    assert result.exit_code == USAGE
    shown = _line(result.output)
    assert all(f"{o}: " in shown for o in ("--rounds", "--min-silos", "--round-deadline-s"))
    assert "validation error" not in shown and calls["flow"] == []


def test_train_refuses_combinations_the_run_spec_refuses(calls: dict[str, list[Any]]) -> None:
    result = _train("--distill", "default=logreg", "--ensemble", "default=xgboost")
    assert result.exit_code == USAGE
    assert "ensemble is not supported with distill" in _line(result.output)
    assert calls["flow"] == []


def test_tree_options_given_to_a_pytorch_model_are_refused(calls: dict[str, list[Any]]) -> None:
    result = _train(
        "--fine-cells", "5", "--grad-bits", "3", "--mode", "cyclic", "--tree-param", "a=1"
    )
    assert result.exit_code == USAGE
    shown = _line(result.output)
    assert "--mode/--tree-param/--fine-cells/--grad-bits" in shown
    assert "apply to tree models (xgboost, lightgbm); --model logreg would ignore them" in shown
    mlp = _train("--model", "mlp", "--hidden", "8", "--trees-per-round", "5")
    assert mlp.exit_code == USAGE and "--model mlp would ignore it" in _line(mlp.output)
    assert calls["contract"] == [] and calls["flow"] == []


def test_pytorch_options_given_to_a_tree_model_are_refused(calls: dict[str, list[Any]]) -> None:
    result = _train("--model", "xgboost", "--lr", "0.3")
    assert result.exit_code == USAGE
    shown = _line(result.output)
    assert "Invalid value for --lr: applies to PyTorch models" in shown
    assert "--tree-param eta=" in shown
    assert calls["flow"] == []


@pytest.mark.parametrize("kinds", [("--ensemble", "default=mlp"), ("--distill", "default=logreg")])
def test_global_model_options_given_to_a_run_of_per_silo_models_are_refused(
    calls: dict[str, list[Any]], kinds: tuple[str, str]
) -> None:
    # the members train with fixed local settings: these would be recorded in the signed
    # spec and never used
    options = ("--lr", "0.5", "--local-epochs", "7", "--batch-size", "8", "--lr-schedule", "cosine")
    result = _train(*kinds, *options)
    assert result.exit_code == USAGE, result.output
    shown = _line(result.output)
    hint = shown.split("Invalid value for ")[1].split(":")[0]
    assert sorted(hint.split("/")) == sorted(options[::2]), shown
    assert f"{kinds[0]} trains each silo's own model with fixed local settings" in shown
    one = _train(*kinds, "--server-lr", "0.5")
    assert one.exit_code == USAGE and "Invalid value for --server-lr: applies" in _line(one.output)
    assert calls["flow"] == []
    sized = _train(*kinds, "--model", "mlp", "--hidden", "8")  # --hidden sizes mlp members
    assert sized.exit_code == 0, sized.output
    assert calls["flow"][0]["model"].hidden == (8,)


def test_train_gives_the_flow_the_spec_it_checked(calls: dict[str, list[Any]]) -> None:
    result = _train("--strategy", "fedprox", "--mu", "0.1", "--lr", "0.2", "--rounds", "3")
    assert result.exit_code == 0, result.output
    (flow,) = calls["flow"]
    assert flow["strategy"] == StrategySpec(name="fedprox", mu=0.1)
    assert flow["training"] == TrainingSpec(lr=0.2)
    assert (flow["rounds"], flow["min_silos"], flow["model"].n_features) == (3, 2, WIDTH)
    trees = _train("--model", "xgboost", "--mode", "cyclic", "--tree-param", "max_depth=3")
    assert trees.exit_code == 0, trees.output
    assert calls["flow"][1]["trees"].mode == "cyclic" and calls["flow"][1]["model"] is None


def test_train_says_prefect_does_not_answer(monkeypatch: pytest.MonkeyPatch) -> None:
    from prefect.settings import PREFECT_API_URL, temporary_settings

    monkeypatch.setattr(train_module, "service_contract", lambda *a: pytest.fail("contacted"))
    with temporary_settings(updates={PREFECT_API_URL: "http://127.0.0.1:9/api"}):
        result = _train()
    assert result.exit_code == UNREACHABLE, result.output
    shown = _line(result.output)
    assert "the Prefect API at http://127.0.0.1:9/api did not answer" in shown
    assert "unexpected" not in shown


def test_schedule_refuses_run_options_no_run_could_use(
    calls: dict[str, list[Any]], tmp_path: Path
) -> None:
    result = _schedule(tmp_path, "--rounds", "0", "--min-silos", "-3", "--round-deadline-s", "-1")
    assert result.exit_code == USAGE, result.output
    shown = _line(result.output)
    assert all(f"{o}: " in shown for o in ("--rounds", "--min-silos", "--round-deadline-s"))
    for options, named in (
        (["--lr", "-1"], "--lr"),
        (["--lr", "inf"], "--lr"),
        (["--model", "logreg", "--mode", "cyclic"], "--mode"),
    ):
        refused = _schedule(tmp_path, *options)
        assert refused.exit_code == USAGE, refused.output
        assert f"Invalid value for {named}:" in _line(refused.output)
    assert calls["pool"] == [] and calls["schedule"] == []


@pytest.mark.parametrize(
    "options, named, why",
    [
        (["--cron", "61 * * * *"], "--cron", 'Invalid cron string: "61 * * * *"'),
        (["--cron", "0 2 * * *", "--timezone", "Mars/Olympus"], "--timezone", "IANA"),
        (["--timezone", "Europe/Paris"], "--timezone", "give --cron too"),
        (["--pool", ""], "--pool", "'' is no Prefect name"),
        (["--name", "a/b"], "--name", "without any of /"),
    ],
)
def test_schedule_refuses_a_bad_schedule_before_creating_anything(
    calls: dict[str, list[Any]], tmp_path: Path, options: list[str], named: str, why: str
) -> None:
    result = _schedule(tmp_path, *options)
    assert result.exit_code == USAGE, result.output
    shown = _line(result.output)
    assert f"Invalid value for {named}:" in shown and why in shown
    assert "validation error" not in shown
    assert calls["contract"] == [] and calls["pool"] == [] and calls["schedule"] == []


def test_schedule_stores_the_checked_spec(calls: dict[str, list[Any]], tmp_path: Path) -> None:
    result = _schedule(tmp_path, "--cron", "0 2 * * *", "--timezone", "Europe/Paris", "--lr", "0.2")
    assert result.exit_code == 0, result.output
    (done,) = calls["schedule"]
    assert (done["cron"], done["timezone"]) == ("0 2 * * *", "Europe/Paris")
    params = done["parameters"]
    assert params["training"] == TrainingSpec(lr=0.2).model_dump(mode="json")
    assert (params["rounds"], params["min_silos"], params["model"]["n_features"]) == (10, 2, WIDTH)


def test_schedule_training_checks_the_schedule_before_the_pool(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    created: list[str] = []
    monkeypatch.setattr(flows.schedule, "ensure_process_pool", created.append)
    for cron, timezone, field in (
        ("61 * * * *", None, "cron"),
        ("0 2 * * *", "Mars/X", "timezone"),
    ):
        with pytest.raises(flows.schedule.ScheduleError) as refused:
            flows.schedule.schedule_training(
                name="n", work_pool="new-pool", parameters={}, cron=cron, timezone=timezone
            )
        assert refused.value.field == field
    assert created == []


def test_a_refused_deployment_removes_the_pool_it_created(monkeypatch: pytest.MonkeyPatch) -> None:
    from prefect.deployments.runner import RunnerDeployment

    removed: list[str] = []
    monkeypatch.setattr(flows.schedule, "ensure_process_pool", lambda name: True)
    monkeypatch.setattr(flows.schedule, "_delete_pool", removed.append)

    def refuse(self: Any, **kwargs: Any) -> None:
        raise RuntimeError("422 from Prefect")

    monkeypatch.setattr(RunnerDeployment, "apply", refuse)
    with pytest.raises(RuntimeError, match="422"):
        flows.schedule.schedule_training(name="n", work_pool="new-pool", parameters={})
    assert removed == ["new-pool"]


def test_a_scheduled_tree_run_passes_prefects_parameter_check(
    calls: dict[str, list[Any]], tmp_path: Path
) -> None:
    """Prefect's server checks a deployment's parameters against the flow's schema, which
    names XGBoost's reg_lambda and reg_alpha by their aliases lambda and alpha."""
    from prefect.utilities.schema_tools import validate

    result = _schedule(tmp_path, "--model", "xgboost", "--tree-param", "max_depth=3")
    assert result.exit_code == 0, result.output
    params = calls["schedule"][0]["parameters"]
    schema = FLOW.parameters.model_dump_for_openapi()
    validate(params, schema, raise_on_error=True, preprocess=True, ignore_required=False)
    assert params["trees"]["params"]["lambda"] == 1.0 and params["model"] is None


DP_ASYNC = ["--dp-noise-multiplier", "1.1", "--dp-clip-norm", "0.5", "--dp-delta", "1e-6"]
PLAIN_ASYNC = ["--no-secure", "--async-buffer", "3", "--max-staleness", "2"]


def test_train_gives_the_flow_privacy_and_asynchronous_rounds(
    calls: dict[str, list[Any]],
) -> None:
    """A coordinator runs DP and asynchronous rounds as the demo does, not only the demo."""
    from schemas.specs import AsyncSpec, PrivacySpec, SecureAggregationSpec

    dp = _train(*DP_ASYNC)
    assert dp.exit_code == 0, dp.output
    assert calls["flow"][0]["privacy"] == PrivacySpec(
        noise_multiplier=1.1, clip_norm=0.5, delta=1e-6
    )
    assert calls["flow"][0]["asynchronous"] is None
    buffered = _train(*PLAIN_ASYNC, "--staleness-weight", "constant")
    assert buffered.exit_code == 0, buffered.output
    flow = calls["flow"][1]
    assert flow["asynchronous"] == AsyncSpec(
        buffer_size=3, max_staleness=2, staleness_weight="constant"
    )
    assert flow["secure_aggregation"] == SecureAggregationSpec(enabled=False)
    assert flow["privacy"] is None


@pytest.mark.parametrize(
    "options, named, why",
    [
        (["--dp-clip-norm", "0.5"], "--dp-clip-norm", "needs both --dp-noise-multiplier and"),
        (["--dp-noise-multiplier", "0", "--dp-clip-norm", "1"], "--dp-noise-multiplier", "0"),
        (["--dp-noise-multiplier", "1", "--dp-clip-norm", "nan"], "--dp-clip-norm", "finite"),
        (["--max-staleness", "2"], "--max-staleness", "give --async-buffer K too"),
        (["--async-buffer", "1"], "buffer_size 1", "below what a secure buffer needs"),
        (["--async-buffer", "2", "--staleness-weight", "cube"], "--staleness-weight", "sqrt"),
    ],
)
def test_train_refuses_privacy_and_buffer_options_by_name(
    calls: dict[str, list[Any]], options: list[str], named: str, why: str
) -> None:
    result = _train(*options)
    assert result.exit_code == USAGE, result.output
    shown = _line(result.output)
    assert named in shown and why in shown, shown
    assert "unexpected" not in shown and calls["flow"] == []


def test_train_refuses_privacy_and_buffers_where_no_run_could_use_them(
    calls: dict[str, list[Any]],
) -> None:
    trees = _train("--model", "xgboost", "--dp-noise-multiplier", "1", "--dp-clip-norm", "1")
    assert trees.exit_code == USAGE
    assert "differential privacy is not implemented for tree models" in _line(trees.output)
    both = _train("--async-buffer", "2", "--dp-noise-multiplier", "1", "--dp-clip-norm", "1")
    assert both.exit_code == USAGE
    assert "would scale the silos' calibrated DP noise" in _line(both.output)
    assert calls["flow"] == []


def test_schedule_takes_the_run_options_train_takes(
    calls: dict[str, list[Any]], tmp_path: Path
) -> None:
    """Every run option of `train` (the token's aside) is one of `schedule` too, and reaches
    the deployment's parameters, which pass Prefect's check against the flow's schema."""
    from prefect.utilities.schema_tools import validate

    train_help = CliRunner().invoke(app, ["train", "--help"], terminal_width=200).output
    schedule_help = CliRunner().invoke(app, ["schedule", "--help"], terminal_width=200).output

    def options(text: str) -> set[str]:  # the first option named on each line of the table
        return set(re.findall(r"^\s+(--[a-z-]+)", text, re.MULTILINE))

    missing = options(train_help) - options(schedule_help) - {"--token"}
    assert missing == set()

    result = _schedule(
        tmp_path, *DP_ASYNC, "--model", "mlp", "--hidden", "8", "--personalize", "ditto",
        "--patience", "3", "--server-lr", "0.5", "--lr-schedule", "cosine", "--batch-size", "16",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    params = calls["schedule"][0]["parameters"]
    assert params["privacy"] == {"noise_multiplier": 1.1, "clip_norm": 0.5, "delta": 1e-6}
    assert params["personalize"]["method"] == "ditto" and params["patience"] == 3
    assert params["strategy"]["server_lr"] == 0.5
    assert (params["training"]["lr_schedule"], params["training"]["batch_size"]) == ("cosine", 16)
    buffered = _schedule(tmp_path, "--async-buffer", "2", "--staleness-weight", "constant")
    assert buffered.exit_code == 0, buffered.output
    params2 = calls["schedule"][1]["parameters"]
    assert params2["asynchronous"]["buffer_size"] == 2
    assert params2["asynchronous"]["staleness_weight"] == "constant"
    schema = FLOW.parameters.model_dump_for_openapi()
    for p in (params, params2):
        validate(p, schema, raise_on_error=True, preprocess=True, ignore_required=False)
