"""Drift warnings reach the coordinator: a silo whose columns stray from the contract's
reference statistics under ``on_drift = "warn"`` passes its gate and trains, and its signed
validation statement names the drifted checks, which `runs show` (table and --json) and the
round artifact's drift column show. Real gate (Great Expectations), real service over HTTP."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
from support.live_service import coordinator, enrolled_silo, service_in_thread
from typer.testing import CliRunner

from flows.cli import app
from flows.contract_draft import draft_contract
from flows.drift_view import drift_by_round, drift_rows
from schemas import tensors
from schemas.contracts import Contract
from schemas.contracts.loader import load_contract_text
from schemas.specs import ModelSpec, RunSpec, SecureAggregationSpec, param_shapes
from schemas.wire import RoundOpen, RunCreate, ValidationSummary
from silos.gate import run_gate
from silos.round_gate import statement_payload

MODEL = ModelSpec(kind="logreg", n_features=3)
runner = CliRunner()


def vitals(n: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    systolic = rng.normal(130, 15, n).round()
    return pd.DataFrame(
        {
            "record": [f"r{i:05d}" for i in range(n)],
            "systolic": systolic,
            "diastolic": (systolic * 0.4 + rng.normal(28, 8, n)).round(),
            "smoker": rng.choice(["yes", "no"], n, p=[0.3, 0.7]),
            "outcome": rng.integers(0, 2, n),
        }
    )


def vitals_contract(on_drift: str) -> Contract:
    """Drafted from one site, blood pressures given a range a steward would allow."""
    text = draft_contract(vitals(400, 0), name="vitals", target="outcome")
    text = re.sub(
        r'(name = "\w+stolic"\ntype = "numeric"\n)range = \[[^\]]*\]', r"\1range = [30, 250]", text
    )
    assert text.count("range = [30, 250]") == 2
    return load_contract_text(text.replace('on_drift = "error"', f'on_drift = "{on_drift}"'), "d")


def swapped(seed: int) -> pd.DataFrame:
    """Another site whose export swapped the two blood pressures: in range, wrong statistics."""
    return vitals(300, seed).rename(columns={"systolic": "diastolic", "diastolic": "systolic"})


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
    coord = coordinator(url)
    coord.create_federation("f")
    silos = {n: enrolled_silo(url, coord, "f", n) for n in summaries}
    spec = RunSpec(
        federation="f",
        dataset="toy",
        model=MODEL,
        rounds=1,
        min_silos=2,
        secure_aggregation=SecureAggregationSpec(enabled=False),
    )
    run = coord.create_run(RunCreate(spec=spec))
    shapes = param_shapes(MODEL)
    coord.put_initial_model(
        run.run_id, tensors.encode({n: np.zeros(s, np.float32) for n, s in shapes})
    )
    coord.start_run(run.run_id)
    coord.open_round(run.run_id, RoundOpen(round=1, deadline_s=30))
    for name, client in silos.items():
        payload = statement_payload(name, 1, summaries[name])
        client.submit_statement(run.run_id, "validation_result", payload)
        delta = {n: np.full(s, 0.1, np.float32) for n, s in shapes}
        meta = {"run_id": run.run_id, "round": "1", "n_examples": "10"}
        client.submit_update(run.run_id, 1, tensors.encode(delta, meta))
    coord.close_round(run.run_id, 1)
    return run.run_id


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
