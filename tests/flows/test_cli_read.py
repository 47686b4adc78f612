"""`fedsilo` read commands against a real service over HTTP: `--json` on each, whole run ids,
run id prefixes (and ambiguous ones), `silo list`, `runs cancel`, unknown silos as errors."""

from __future__ import annotations

import json
from pathlib import Path

from support.api_federation import SPEC, aggregated_round
from support.live_service import coordinator, enrolled_silo, service_in_thread
from typer.testing import CliRunner

from flows.cli import app
from flows.cli.errors import NOT_FOUND
from schemas.wire import RunCreate

runner = CliRunner()


def _json(args: list[str]) -> object:
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_json_whole_ids_prefixes_silo_list_and_unknown_silo(
    sqlite_url: str, tmp_path: Path
) -> None:
    with service_in_thread(tmp_path / "svc", sqlite_url) as url:
        run_id, _ = aggregated_round(url, rounds=2)  # round 2 is left to open
        auth = ["--service-url", url, "--token", "test-admin-token"]

        runs = _json(["runs", "list", "--json", *auth])
        assert isinstance(runs, list) and [r["run_id"] for r in runs] == [run_id]
        assert runs[0]["status"] == "running" and runs[0]["participants"] == ["a", "b"]
        table = runner.invoke(app, ["runs", "list", *auth])
        assert run_id in table.output and "…" not in table.output

        shown = _json(["runs", "show", run_id[:6], "--json", *auth])
        assert isinstance(shown, dict) and shown["run"]["run_id"] == run_id
        assert [r["round"] for r in shown["rounds"]] == [1]
        assert {s["silo"] for s in shown["rounds"][0]["silos"]} == {"a", "b"}
        assert "awaited" in shown["rounds"][0] and "stage" in shown["rounds"][0]

        silos = _json(["silo", "list", "--federation", "f", "--json", *auth])
        assert isinstance(silos, list) and [s["name"] for s in silos] == ["a", "b"]
        assert all(s["status"] == "approved" and s["online"] for s in silos), silos
        assert all(s["last_seen_at"] for s in silos)
        listed = runner.invoke(app, ["silo", "list", "--federation", "f", *auth])
        assert listed.exit_code == 0 and "approved" in listed.output and "yes" in listed.output

        feds = _json(["federation", "list", "--json", *auth])
        assert isinstance(feds, list) and [f["name"] for f in feds] == ["f"]

        contrib = _json(["lineage", "contributions", "a", "--json", *auth])
        assert isinstance(contrib, dict) and contrib["silo"] == "a"
        assert [(c["run_id"], c["model_version"]) for c in contrib["contributions"]] == [
            (run_id, 1)
        ]
        nosuch = runner.invoke(app, ["lineage", "contributions", "nosuchsilo", *auth])
        assert nosuch.exit_code == NOT_FOUND
        assert "no silo 'nosuchsilo' in the ledger; known silos: a, b" in nosuch.output

        timeline = _json(["lineage", "show", run_id[:8], "--json", *auth])
        assert isinstance(timeline, dict) and timeline["run_id"] == run_id
        assert "run_started" in [e["kind"] for e in timeline["entries"]]
        events = tmp_path / "events.jsonl"
        export = runner.invoke(app, ["lineage", "export", run_id[:5], "--out", str(events), *auth])
        assert export.exit_code == 0 and f"for run {run_id} written" in export.output
        assert all(run_id in line for line in events.read_text().splitlines())
        verified = _json(["lineage", "verify", "--json", *auth])
        assert isinstance(verified, dict) and verified["ok"] is True
        assert verified["chain"]["ok"] and verified["entries"] > 0


def test_ambiguous_prefix_lists_candidates_and_cancel_keeps_brackets(
    sqlite_url: str, tmp_path: Path
) -> None:
    with service_in_thread(tmp_path / "svc", sqlite_url) as url:
        coord = coordinator(url)
        coord.create_federation("f")
        for name in ("a", "b"):
            enrolled_silo(url, coord, "f", name)
        ids: dict[str, list[str]] = {}
        while all(len(group) < 2 for group in ids.values()):  # 17 runs at most (16 hex digits)
            run_id = coord.create_run(RunCreate(spec=SPEC)).run_id
            ids.setdefault(run_id[0], []).append(run_id)
        first, pair = next((k, v) for k, v in ids.items() if len(v) == 2)
        auth = ["--service-url", url, "--token", "test-admin-token"]

        ambiguous = runner.invoke(app, ["runs", "show", first, *auth])
        assert ambiguous.exit_code == NOT_FOUND
        assert f"run id prefix '{first}' matches 2 runs" in ambiguous.output
        assert all(run_id in ambiguous.output for run_id in pair)

        reason = "secure aggregation: [a, b] needed 3"
        cancel = runner.invoke(app, ["runs", "cancel", pair[0], "--reason", reason, *auth])
        assert cancel.exit_code == 0, cancel.output
        assert f"run {pair[0]} in f: cancelled ({reason})" in cancel.output
        assert coord.get_run(pair[0]).status == "cancelled"
        shown = runner.invoke(app, ["runs", "show", pair[0], *auth])
        assert shown.exit_code == 0 and f"cancelled {reason}" in shown.output
