"""Names and run ids reach the service as exactly one path segment or query value: the CLI
refuses a value that is not a name (exit 2, naming the option) before sending anything, and the
coordinator's client escapes whatever it is given, so "typo/../b" can never address silo b."""

from __future__ import annotations

from pathlib import Path

import pytest
from support.live_service import coordinator, enrolled_silo, service_in_thread
from typer.testing import CliRunner

from flows.cli import app
from flows.cli.errors import USAGE
from silos.client_errors import InvalidPayload, ServiceRejected

runner = CliRunner()


def _flat(text: str) -> str:
    return " ".join(text.split())


def _statuses(url: str) -> dict[str, str]:
    return {s.name: s.status for s in coordinator(url).silos("f")}


def test_the_cli_refuses_names_and_run_ids_that_are_not_names(
    sqlite_url: str, tmp_path: Path
) -> None:
    with service_in_thread(tmp_path / "svc", sqlite_url) as url:
        coord = coordinator(url)
        coord.create_federation("f")
        for name in ("a", "b"):
            enrolled_silo(url, coord, "f", name)
        auth = ["--service-url", url, "--token", "test-admin-token"]

        revoke = runner.invoke(app, ["silo", "revoke", "typo/../b", "--federation", "f", *auth])
        assert revoke.exit_code == USAGE, revoke.output
        assert "silo name 'typo/../b' is not a valid name" in _flat(revoke.output)
        assert _statuses(url) == {"a": "approved", "b": "approved"}  # b was not revoked

        listed = runner.invoke(app, ["silo", "list", "--federation", "../runs", *auth])
        assert listed.exit_code == USAGE, listed.output
        assert "--federation '../runs' is not a valid name" in _flat(listed.output)
        approve = runner.invoke(app, ["silo", "approve", "a?b", "--federation", "f", *auth])
        assert approve.exit_code == USAGE, approve.output
        assert "silo name 'a?b' is not a valid name" in _flat(approve.output)

        for run_id in ("", "abc/", "?", "../federations"):
            shown = runner.invoke(app, ["runs", "show", run_id, *auth])
            assert shown.exit_code == USAGE, (run_id, shown.output)
            assert f"RUN_ID {run_id!r} is not a run id or a prefix of one" in _flat(shown.output)

        revoked = runner.invoke(app, ["silo", "revoke", "b", "--federation", "f", *auth])
        assert revoked.exit_code == 0, revoked.output
        assert "silo b in f: revoked" in revoked.output


def test_the_client_escapes_every_name_it_puts_in_a_url(sqlite_url: str, tmp_path: Path) -> None:
    with service_in_thread(tmp_path / "svc", sqlite_url) as url:
        coord = coordinator(url)
        coord.create_federation("f")
        for name in ("a", "b"):
            enrolled_silo(url, coord, "f", name)
        coord.revoke("f", "b")
        # unescaped, these were POST /v1/federations/f/silos/b/approve and .../a/revoke
        with pytest.raises(ServiceRejected):
            coord.approve("f", "typo/../b")
        with pytest.raises(ServiceRejected):
            coord.revoke("f", "typo/../a")
        assert _statuses(url) == {"a": "approved", "b": "revoked"}
        # unescaped, "f&limit=1" was federation=f plus a second limit parameter
        with pytest.raises(InvalidPayload):
            coord.list_runs(federation="f&limit=1")
        with pytest.raises(ServiceRejected):
            coord.get_run("../federations")
        with pytest.raises(ServiceRejected):
            coord.silos("../runs")
