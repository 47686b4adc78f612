"""`fedsilo lineage ...` and `fedsilo report` against a real service over HTTP."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from support.live_service import coordinator, enrolled_silo, service_in_thread
from typer.testing import CliRunner

from flows.cli import app
from schemas import tensors
from schemas.specs import ModelSpec, RunSpec, SecureAggregationSpec, param_shapes
from schemas.wire import RoundOpen, RunCreate

MODEL = ModelSpec(kind="logreg", n_features=3)


def _one_round(url: str) -> str:
    coord = coordinator(url)
    coord.create_federation("f")
    silos = {n: enrolled_silo(url, coord, "f", n) for n in ("a", "b")}
    spec = RunSpec(
        federation="f",
        dataset="toy",
        model=MODEL,
        rounds=1,
        min_silos=2,
        secure_aggregation=SecureAggregationSpec(enabled=False),
    )
    run = coord.create_run(RunCreate(spec=spec))
    names = [n for n, _ in param_shapes(MODEL)]
    zeros = {n: np.zeros(s, np.float32) for n, s in param_shapes(MODEL)}
    coord.put_initial_model(run.run_id, tensors.encode(zeros))
    coord.start_run(run.run_id)
    coord.open_round(run.run_id, RoundOpen(round=1, deadline_s=30))
    for i, client in enumerate(silos.values()):
        delta = {n: np.full(s, 0.1 * (i + 1), np.float32) for n, s in param_shapes(MODEL)}
        meta = {"run_id": run.run_id, "round": "1", "n_examples": "10"}
        client.submit_update(
            run.run_id, 1, tensors.encode(dict(zip(names, delta.values(), strict=True)), meta)
        )
    coord.close_round(run.run_id, 1)
    return run.run_id


def test_verify_show_contributions_report_and_a_truncated_export(
    sqlite_url: str, tmp_path: Path
) -> None:
    runner = CliRunner()
    with service_in_thread(tmp_path / "svc", sqlite_url) as url:
        run_id = _one_round(url)
        auth = ["--service-url", url, "--token", "test-admin-token"]
        verify = runner.invoke(app, ["lineage", "verify", *auth])
        assert verify.exit_code == 0, verify.output
        assert "ledger OK" in verify.output
        show = runner.invoke(app, ["lineage", "show", run_id, *auth])
        assert show.exit_code == 0 and "run_started" in show.output
        contrib = runner.invoke(app, ["lineage", "contributions", "a", *auth])
        assert contrib.exit_code == 0 and "v1" in contrib.output
        report = runner.invoke(app, ["report", run_id, "--out", str(tmp_path / "rep"), *auth])
        assert report.exit_code == 0, report.output
        assert list((tmp_path / "rep").glob("*.html"))
        export = tmp_path / "ledger.jsonl"
        out = runner.invoke(
            app, ["lineage", "export", run_id, "--format", "ledger", "--out", str(export), *auth]
        )
        assert out.exit_code == 0, out.output
    offline = runner.invoke(
        app, ["lineage", "verify", "--export", str(export), "--artifacts", str(tmp_path / "svc")]
    )
    assert offline.exit_code == 0, offline.output
    text = export.read_text()
    export.write_text(text[: len(text) * 2 // 3])  # cut mid-file
    truncated = runner.invoke(
        app, ["lineage", "verify", "--export", str(export), "--artifacts", str(tmp_path / "svc")]
    )
    assert truncated.exit_code == 1
    assert "truncated" in truncated.output
