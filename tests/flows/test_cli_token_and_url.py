"""The CLI's admin token and service address: read strictly, refused with exit 2 naming the
file, option or variable at fault (never quoting the token), and one precedence everywhere:
an explicit --token or --token-file beats FEDSILO_ADMIN_TOKEN."""

from __future__ import annotations

from pathlib import Path

import pytest
import typer
from support.live_service import free_port, service_in_thread
from typer.testing import CliRunner

from flows.admin_token import read_token_file
from flows.cli import app
from flows.cli.common import fail, flow_token_source, token_from
from flows.cli.errors import AUTH, USAGE
from flows.exceptions import AdminTokenError

runner = CliRunner()
SECRET = "P3KTYQ6gzH4uvvc0eXRtYXhxYwXVeE1tpeEIOj1zRv4"


@pytest.fixture(autouse=True)
def _no_token_in_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FEDSILO_ADMIN_TOKEN", raising=False)
    monkeypatch.delenv("FEDSILO_SERVICE_URL", raising=False)


def _dead_url() -> str:
    return f"http://127.0.0.1:{free_port()}"


def _token_file(tmp_path: Path, content: bytes, name: str = "admin.token") -> Path:
    path = tmp_path / name
    path.write_bytes(content)
    path.chmod(0o600)
    return path


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (f"{SECRET}\n# rotated 2026-12-01\n".encode(), "holds 2 lines"),
        (b"\xff\xfe\n", "byte that is not ASCII at position 1"),
        (f"{SECRET}\x00\n".encode(), "not printable ASCII at position 44"),
        (b"  \n\n", "is empty"),
    ],
)
def test_a_token_file_that_is_not_one_token_line_is_bad_input_naming_the_file(
    tmp_path: Path, content: bytes, problem: str
) -> None:
    path = _token_file(tmp_path, content)
    result = runner.invoke(
        app, ["runs", "list", "--service-url", _dead_url(), "--token-file", str(path)]
    )
    assert result.exit_code == USAGE, result.output
    assert "--token-file" in result.output and str(path) in result.output
    assert problem in result.output
    assert SECRET not in result.output  # the token is never echoed
    with pytest.raises(AdminTokenError, match=problem) as caught:  # the flow's reader too
        read_token_file(path)
    assert str(path) in str(caught.value) and SECRET not in str(caught.value)


def test_surrounding_whitespace_of_a_token_file_is_dropped(tmp_path: Path) -> None:
    path = _token_file(tmp_path, f"\n  {SECRET}  \r\n".encode())
    assert token_from(None, path) == SECRET
    assert read_token_file(path) == SECRET


def test_a_non_ascii_token_value_names_the_option_or_the_variable() -> None:
    args = ["runs", "list", "--service-url", _dead_url()]
    given = runner.invoke(app, [*args, "--token", "héllo"])
    assert given.exit_code == USAGE, given.output
    assert "--token" in given.output and "not printable ASCII at position 2" in given.output
    exported = runner.invoke(app, args, env={"FEDSILO_ADMIN_TOKEN": "héllo"})
    assert exported.exit_code == USAGE, exported.output
    assert "FEDSILO_ADMIN_TOKEN" in exported.output


def test_an_explicit_token_file_beats_a_stale_exported_token(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = _token_file(tmp_path, f"{SECRET}\n".encode())
    monkeypatch.setenv("FEDSILO_ADMIN_TOKEN", "stale")
    assert token_from("stale", path) == SECRET  # typer passes the variable as --token
    assert token_from(None, None) == "stale"  # alone, the variable is used
    with flow_token_source("stale", path, None) as source:  # train: the same rule
        assert source.file == str(path.resolve())
    with pytest.raises(typer.BadParameter, match="not both"):  # two explicit ones: refused
        token_from("typed", path)
    with pytest.raises(typer.BadParameter, match="not both"):
        with flow_token_source("typed", path, None):
            pass


def test_the_precedence_holds_against_a_live_service(sqlite_url: str, tmp_path: Path) -> None:
    path = _token_file(tmp_path, b"test-admin-token\n")
    with service_in_thread(tmp_path / "svc", sqlite_url) as url:
        stale = {"FEDSILO_ADMIN_TOKEN": "stale"}
        args = ["federation", "list", "--service-url", url]
        by_file = runner.invoke(app, [*args, "--token-file", str(path)], env=stale)
        assert by_file.exit_code == 0, by_file.output
        by_env = runner.invoke(app, args, env={"FEDSILO_ADMIN_TOKEN": "test-admin-token"})
        assert by_env.exit_code == 0, by_env.output
        slash = runner.invoke(app, ["federation", "list", "--service-url", url + "/"], env=stale)
        assert slash.exit_code == 4, slash.output  # the address works; the stale token doesn't


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("http://127.0.0.1:8700/api", "has a path"),
        ("http://127.0.0.1:8700/v1", "has a path"),
        ("127.0.0.1:8700", "is not an http:// or https:// URL"),
        ("htp://x", "is not an http:// or https:// URL"),
        ("", "is not an http:// or https:// URL"),
        ("http://127.0.0.1:99999", "Port out of range"),
        ("http://[::1", "is not a valid URL"),
    ],
)
def test_a_malformed_service_url_is_bad_input_not_an_outage(url: str, problem: str) -> None:
    args = ["runs", "list", "--token", "t"]
    given = runner.invoke(app, [*args, "--service-url", url])
    assert given.exit_code == USAGE, given.output
    assert "--service-url" in given.output and problem in given.output
    assert repr(url) in given.output
    if url:  # click reads an empty variable as unset
        exported = runner.invoke(app, args, env={"FEDSILO_SERVICE_URL": url})
        assert exported.exit_code == USAGE, exported.output
        assert "FEDSILO_SERVICE_URL" in exported.output


def test_fail_prints_a_many_line_message_on_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    exit_ = fail("2 validation errors for X\nname\n  Field required\n")
    assert exit_.exit_code == USAGE
    assert capsys.readouterr().err == "error: 2 validation errors for X name Field required\n"


@pytest.mark.parametrize(
    "command",
    [
        ["runs", "list"],
        ["train", "--federation", "f", "--dataset", "heart_disease", "--rounds", "1"],
    ],
)
def test_no_admin_token_at_all_exits_4_as_the_readme_says(command: list[str]) -> None:
    result = runner.invoke(app, [*command, "--service-url", _dead_url()])
    assert result.exit_code == AUTH, result.output
    assert "no admin token" in result.output and "FEDSILO_ADMIN_TOKEN" in result.output
