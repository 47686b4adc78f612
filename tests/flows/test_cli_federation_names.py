"""`fedsilo` with a misspelt federation says it does not exist (exit 3), and `federation
create` says whether it created the federation or found it (a new description is refused)."""

from __future__ import annotations

import json
from pathlib import Path

from support.live_service import service_in_thread
from typer.testing import CliRunner

from flows.cli import app
from flows.cli.errors import NOT_FOUND, REFUSED, USAGE

runner = CliRunner()


def _lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.strip()]


def test_runs_list_of_an_unknown_federation_is_not_found(sqlite_url: str, tmp_path: Path) -> None:
    with service_in_thread(tmp_path / "svc", sqlite_url) as url:
        auth = ["--service-url", url, "--token", "test-admin-token"]
        assert runner.invoke(app, ["federation", "create", "heart", *auth]).exit_code == 0
        for extra in ([], ["--json"]):
            typo = runner.invoke(app, ["runs", "list", "--federation", "hreat", *extra, *auth])
            assert typo.exit_code == NOT_FOUND, typo.output
            assert _lines(typo.output) == [
                "error: federation 'hreat' does not exist; create it with `fedsilo federation "
                "create hreat` (POST /v1/federations); known federations: heart"
            ]
        odd = runner.invoke(app, ["runs", "list", "--federation", "heart&x=", *auth])
        assert (
            odd.exit_code == USAGE and "--federation 'heart&x=' is not a valid name" in odd.output
        )
        known = runner.invoke(app, ["runs", "list", "--federation", "heart", "--json", *auth])
        assert known.exit_code == 0 and json.loads(known.stdout) == []
        approve = runner.invoke(
            app, ["silo", "approve", "cleveland", "--federation", "hreat", *auth]
        )
        assert approve.exit_code == NOT_FOUND, approve.output
        said = " ".join(approve.output.split())
        assert "federation 'hreat' does not exist" in said and "enrolled silos" not in said
        assert said.endswith("`fedsilo federation list` shows the federations")


def test_federation_create_says_created_or_already_exists(sqlite_url: str, tmp_path: Path) -> None:
    with service_in_thread(tmp_path / "svc", sqlite_url) as url:
        auth = ["--service-url", url, "--token", "test-admin-token"]
        create = ["federation", "create", "heart", *auth]
        first = runner.invoke(app, [*create, "--description", "heart disease"])
        assert first.exit_code == 0, first.output
        assert _lines(first.output) == [f"federation heart exists on {url} (created now)"]
        for again in ([], ["--description", "heart disease"]):  # nothing would change: ok
            same = runner.invoke(app, [*create, *again])
            assert same.exit_code == 0, same.output
            assert f"federation heart already exists on {url} (created " in same.output
            assert "nothing changed" in same.output
        other = runner.invoke(app, [*create, "--description", "a new description"])
        assert other.exit_code == REFUSED
        assert _lines(other.output) == [
            f"error: federation 'heart' already exists on {url} with description "
            "'heart disease'; `federation create` does not change an existing federation"
        ]
        listed = runner.invoke(app, ["federation", "list", "--json", *auth])
        assert [f["description"] for f in json.loads(listed.stdout)] == ["heart disease"]
