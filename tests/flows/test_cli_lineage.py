"""`fedsilo lineage ...` and `fedsilo report` against a real service over HTTP, and on export
files."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import text
from support.api_federation import aggregated_round
from support.live_service import coordinator, service_in_thread
from typer.testing import CliRunner

from aggregation.service.db import make_engine
from flows.cli import app
from flows.cli.errors import OK, USAGE
from schemas.ledger_export import export_entries
from schemas.wire import RunFinish
from silos.checkpoints import countersign_pending


def test_verify_show_contributions_report_and_a_truncated_export(
    sqlite_url: str, tmp_path: Path
) -> None:
    runner = CliRunner()
    with service_in_thread(tmp_path / "svc", sqlite_url) as url:
        run_id, _ = aggregated_round(url)
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
            app, ["lineage", "export", "--format", "ledger", "--out", str(export), *auth]
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


def test_verify_names_a_cut_tail_from_the_silo_copies(sqlite_url: str, tmp_path: Path) -> None:
    runner = CliRunner()
    with service_in_thread(tmp_path / "svc", sqlite_url) as url:
        run_id, silos = aggregated_round(url)
        coordinator(url).finish_run(run_id, RunFinish(status="finished"))
        copies = []
        for name, client in silos.items():
            countersign_pending(client, tmp_path / f"silo-{name}")
            copies += ["--silo-copy", str(tmp_path / f"silo-{name}")]
        auth = ["--service-url", url, "--token", "test-admin-token"]
        ok = runner.invoke(app, ["lineage", "verify", *auth, *copies])
        assert ok.exit_code == 0, ok.output
        assert "anchors OK" in ok.output
        show = runner.invoke(app, ["lineage", "show", run_id, *auth])
        assert show.exit_code == 0, show.output
        assert "ledger checkpoints of run" in show.output and "silo:b" in show.output
        export = tmp_path / "ledger.jsonl"
        runner.invoke(app, ["lineage", "export", "--format", "ledger", "--out", str(export), *auth])
        assert export.read_text().count('\n{"checkpoint":') == 2  # round 1 closed, run finished
        # The attacker removes run_finished, fixes ledger_head and hides the checkpoints.
        engine = make_engine(sqlite_url)
        with engine.begin() as conn:
            conn.execute(text("DROP TRIGGER ledger_entries_no_delete"))
            conn.execute(text("DELETE FROM ledger_countersignatures"))
            conn.execute(text("DELETE FROM ledger_checkpoints"))
            end = conn.execute(text("SELECT max(seq) FROM ledger_entries")).scalar()
            conn.execute(text("DELETE FROM ledger_entries WHERE seq = :end"), {"end": end})
            head = conn.execute(
                text("SELECT entry_hash FROM ledger_entries WHERE seq = :s"), {"s": end - 1}
            ).scalar()
            conn.execute(
                text("UPDATE ledger_head SET seq = :s, entry_hash = :h"), {"s": end - 1, "h": head}
            )
        engine.dispose()
        alone = runner.invoke(app, ["lineage", "verify", *auth])
        assert alone.exit_code == 0, alone.output  # the chain alone cannot tell...
        assert "no countersigned checkpoint" in alone.output
        caught = runner.invoke(app, ["lineage", "verify", *auth, *copies])
        assert caught.exit_code == 1, caught.output
        flat = " ".join(caught.output.split())
        assert f"ledger ends at seq {end - 1} but checkpoint of the end of run {run_id}" in flat
        assert "countersigned by silo:a, silo:b" in flat
    # The export taken before the attack carries its countersigned checkpoints and verifies.
    offline = runner.invoke(
        app, ["lineage", "verify", "--export", str(export), "--artifacts", str(tmp_path / "svc")]
    )
    assert offline.exit_code == 0, offline.output
    assert "anchors OK: 2 countersigned checkpoints" in " ".join(offline.output.split())


@pytest.mark.parametrize(
    ("trailer", "keys", "says"),
    [
        (
            '{"trailer":5}',
            "{}",
            "ledger.jsonl: line 2 (trailer): not a version 2 trailer {checkpoints, count, "
            "head_hash, head_seq} (5, not an object)",
        ),
        (None, "{not json", "ledger.keys.json line 1: not a JSON keys file"),
        (None, "[]", "ledger.keys.json: not a JSON object of signer -> hex public key (list)"),
        (None, '{"service": 5}', "ledger.keys.json: public key of service is not a raw Ed25519"),
        (None, '{"service": null}', "ledger.keys.json: public key of service is not a raw"),
    ],
)
def test_a_malformed_export_or_keys_file_is_a_bad_input_file(
    trailer: str | None, keys: str, says: str, tmp_path: Path
) -> None:
    lines = export_entries([]).split("\n")  # header, trailer, ""
    lines[1] = trailer or lines[1]
    export = tmp_path / "ledger.jsonl"
    export.write_text("\n".join(lines), encoding="utf-8")
    export.with_suffix(".keys.json").write_text(keys, encoding="utf-8")
    result = CliRunner().invoke(app, ["lineage", "verify", "--export", str(export)])
    assert result.exit_code == USAGE, result.output
    assert f"error: {tmp_path / says}" in " ".join(result.output.split())


def _flat(text: str) -> str:
    return " ".join(text.split())


def test_a_ledger_export_is_whole_so_it_takes_no_run_id(sqlite_url: str, tmp_path: Path) -> None:
    runner = CliRunner()
    export = tmp_path / "l.jsonl"
    with service_in_thread(tmp_path / "svc", sqlite_url) as url:
        aggregated_round(url)
        auth = ["--service-url", url, "--token", "test-admin-token"]
        one_run = ["lineage", "export", "no-such-run", "--format", "ledger", "--out", str(export)]
        refused = runner.invoke(app, [*one_run, *auth])
        assert refused.exit_code == USAGE, refused.output
        assert "--format ledger exports the whole ledger" in _flat(refused.output)
        assert not export.exists()
        no_run = runner.invoke(app, ["lineage", "export", "--out", str(export), *auth])
        assert no_run.exit_code == USAGE, no_run.output
        assert "--format openlineage exports one run: give RUN_ID" in _flat(no_run.output)
        whole = ["lineage", "export", "--format", "ledger", "--out", str(export), *auth]
        written = runner.invoke(app, whole)
        assert written.exit_code == OK, written.output
        assert (tmp_path / "l.keys.json").is_file()


def test_an_export_reads_offline_without_a_token(
    sqlite_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("FEDSILO_ADMIN_TOKEN", raising=False)
    monkeypatch.delenv("FEDSILO_SERVICE_URL", raising=False)
    runner = CliRunner()
    export, keys_file = tmp_path / "l.jsonl", tmp_path / "l.keys.json"
    with service_in_thread(tmp_path / "svc", sqlite_url) as url:
        run_id, _ = aggregated_round(url)
        auth = ["--service-url", url, "--token", "test-admin-token"]
        whole = ["lineage", "export", "--format", "ledger", "--out", str(export), *auth]
        assert runner.invoke(app, whole).exit_code == OK
        keys = keys_file.read_text()
        keys_file.unlink()
        fetched = runner.invoke(app, ["lineage", "verify", "--export", str(export), *auth])
    # keys missing but a token given: the service's keys, and it says so
    assert fetched.exit_code == OK, fetched.output
    assert "verifying with the service's author keys" in _flat(fetched.output)
    # the service is gone and there is no token: reading the export needs neither
    show = runner.invoke(app, ["lineage", "show", run_id[:6], "--export", str(export)])
    assert show.exit_code == OK, show.output
    assert "run_started" in show.output
    contrib = runner.invoke(app, ["lineage", "contributions", "a", "--export", str(export)])
    assert contrib.exit_code == OK, contrib.output
    # verifying needs the authors' keys: it names the missing file and how to get it
    verify = runner.invoke(app, ["lineage", "verify", "--export", str(export)])
    assert verify.exit_code == USAGE, verify.output
    said = _flat(verify.output)
    assert f"{keys_file} not found: the signatures in {export} cannot be verified" in said
    assert "admin token" not in said and "FEDSILO_ADMIN_TOKEN" not in said
    report = ["report", run_id, "--out", str(tmp_path / "rep"), "--export", str(export)]
    rehash = runner.invoke(app, report)
    assert rehash.exit_code == USAGE, rehash.output
    assert "give --artifacts WORKSPACE" in _flat(rehash.output)
    keys_file.write_text(keys)
    offline = runner.invoke(app, ["lineage", "verify", "--export", str(export)])
    assert offline.exit_code == OK, offline.output
    assert "ledger OK" in offline.output
    written_report = runner.invoke(app, [*report, "--no-rehash"])
    assert written_report.exit_code == OK, written_report.output
