"""Drift warnings reach the coordinator: a silo whose columns stray from the contract's
reference statistics under ``on_drift = "warn"`` passes its gate and trains, and its signed
validation statement names the drifted checks, which `runs show` (table and --json) and the
round artifact's drift column show. Real gate (Great Expectations), real service over HTTP."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from support.api_federation import SHAPES, SPEC, started_run
from support.live_service import coordinator, service_in_thread
from support.vitals import swapped, vitals, vitals_contract
from typer.testing import CliRunner

from flows.cli import app
from flows.drift_view import drift_by_round, drift_rows
from schemas import tensors
from schemas.wire import RoundOpen, ValidationSummary
from silos.gate import run_gate
from silos.round_gate import statement_payload

runner = CliRunner()


def test_warn_summary_carries_the_drifted_checks_and_error_does_not(tmp_path: Path) -> None:
    warned = run_gate(swapped(1), vitals_contract("warn"), silo="w", workspace=tmp_path).summary
    assert warned.success and not warned.failed
    assert {w.column for w in warned.warnings} == {"systolic", "diastolic"}
    assert all(w.warning and w.expectation.startswith("expect_column_") for w in warned.warnings)
    sent = statement_payload("w", 3, warned)["warnings"]
    assert isinstance(sent, list)
    assert {(w["expectation"], w["column"]) for w in sent} == {
        (w.expectation, w.column) for w in warned.warnings
    }
    assert all(set(w) == {"expectation", "column"} for w in sent)  # observed means stay home

    refused = run_gate(swapped(1), vitals_contract("error"), silo="e", workspace=tmp_path).summary
    assert not refused.success and not refused.warnings
    assert {f.column for f in refused.failed} >= {"systolic", "diastolic"}
    clean = run_gate(vitals(300, 2), vitals_contract("warn"), silo="c", workspace=tmp_path)
    assert clean.summary.success and not clean.summary.warnings
    assert "warnings" not in statement_payload("c", 1, clean.summary)  # old payloads unchanged


def _round_with(url: str, summaries: dict[str, ValidationSummary]) -> str:
    """A run whose round 1 aggregated every silo's update after its validation statement."""
    coord, silos, run_id = started_run(url, summaries, SPEC.model_copy(update={"rounds": 1}))
    coord.open_round(run_id, RoundOpen(round=1, deadline_s=30))
    for name, client in silos.items():
        payload = statement_payload(name, 1, summaries[name])
        client.submit_statement(run_id, "validation_result", payload)
        delta = {n: np.full(s, 0.1, np.float32) for n, s in SHAPES}
        meta = {"run_id": run_id, "round": "1", "n_examples": "10"}
        client.submit_update(run_id, 1, tensors.encode(delta, meta))
    coord.close_round(run_id, 1)
    return run_id


def test_runs_show_names_the_silo_that_trained_despite_drift(
    sqlite_url: str, tmp_path: Path
) -> None:
    contract = vitals_contract("warn")
    summaries = {
        "drifting": run_gate(swapped(1), contract, silo="drifting", workspace=tmp_path).summary,
        "steady": run_gate(vitals(300, 2), contract, silo="steady", workspace=tmp_path).summary,
    }
    assert all(s.success for s in summaries.values())  # both pass the gate and train
    with service_in_thread(tmp_path / "svc", sqlite_url) as url:
        run_id = _round_with(url, summaries)
        auth = ["--service-url", url, "--token", "test-admin-token"]
        shown = runner.invoke(app, ["runs", "show", run_id, "--json", *auth])
        assert shown.exit_code == 0, shown.output
        body = json.loads(shown.stdout)
        silo_states = {s["silo"]: s["state"] for s in body["rounds"][0]["silos"]}
        assert silo_states == {"drifting": "submitted", "steady": "submitted"}
        drift = body["drift_warnings"]
        assert [(d["round"], d["silo"]) for d in drift] == [(1, "drifting")]
        assert set(drift[0]["checks"]) == {
            f"{w.expectation}({w.column})" for w in summaries["drifting"].warnings
        }

        table = runner.invoke(app, ["runs", "show", run_id, *auth], terminal_width=200)
        assert table.exit_code == 0, table.output
        section = table.output.split("drift warnings", 1)[1]
        assert "drifting" in section and "systolic" in section and "steady" not in section

        # the coordinator's round artifact column, from the same signed statements
        column = drift_by_round(drift_rows(coordinator(url).ledger(run_id)))
        assert list(column) == [1] and column[1].startswith("drifting: ")
        assert "diastolic" in column[1] and "steady" not in column[1]
