"""`fedsilo aggregator serve` refuses what it cannot serve with before it writes anything: a
port in use (no new workspace, no new admin token, an existing token untouched), a port out of
range, an unwritable workspace, a bad database URL or admin token file; each is one `error:`
line naming the option, exit 2."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from flows.cli import app
from flows.cli.errors import USAGE

runner = CliRunner()


@pytest.fixture(autouse=True)
def _keep_umask() -> Iterator[None]:
    """`serve` makes the process's umask owner-only once its port is bound: not this one's."""
    previous = os.umask(0o022)
    os.umask(previous)
    yield
    os.umask(previous)


@pytest.fixture
def busy_port() -> Iterator[int]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(1)
        yield int(sock.getsockname()[1])


def _serve(workspace: Path, port: int, *extra: str):  # type: ignore[no-untyped-def]
    args = ["aggregator", "serve", "--workspace", str(workspace), "--port", str(port), *extra]
    return runner.invoke(app, args)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _error_line(output: str) -> str:
    lines = [line for line in output.splitlines() if line.strip()]
    assert len(lines) == 1, output  # no banner, no token announced
    return lines[0]


def test_a_busy_port_is_refused_before_a_workspace_is_made(tmp_path: Path, busy_port: int) -> None:
    workspace = tmp_path / "svc"
    result = _serve(workspace, busy_port)
    assert result.exit_code == USAGE, result.output
    assert _error_line(result.output) == (
        f"error: 127.0.0.1:{busy_port} is already in use (another service?): stop it or "
        "choose another --port"
    )
    assert not workspace.exists()


def test_a_busy_port_leaves_an_existing_workspace_as_it_was(tmp_path: Path, busy_port: int) -> None:
    workspace = tmp_path / "svc"
    workspace.mkdir()
    (workspace / "admin.token").write_text("the-token-silos-were-given\n")
    result = _serve(workspace, busy_port)
    assert result.exit_code == USAGE, result.output
    assert [p.name for p in workspace.iterdir()] == ["admin.token"]
    assert (workspace / "admin.token").read_text() == "the-token-silos-were-given\n"


@pytest.mark.parametrize("port", ["99999", "-1"])
def test_a_port_out_of_range_is_a_usage_error(tmp_path: Path, port: str) -> None:
    result = runner.invoke(
        app, ["aggregator", "serve", "--workspace", str(tmp_path / "svc"), "--port", port]
    )
    assert result.exit_code == USAGE, result.output
    assert "'--port'" in result.output and "unexpected" not in result.output
    assert not (tmp_path / "svc").exists()


def test_an_unwritable_workspace_names_the_option(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    result = _serve(blocker / "svc", _free_port())
    assert result.exit_code == USAGE, result.output
    assert _error_line(result.output) == (
        f"error: --workspace {blocker / 'svc'}: cannot write there (Not a directory)"
    )


def test_a_bad_database_url_names_the_option(tmp_path: Path) -> None:
    result = _serve(tmp_path / "svc", _free_port(), "--database-url", "bogus://x")
    assert result.exit_code == USAGE, result.output
    line = _error_line(result.output)
    assert line.startswith("error: --database-url: ") and "bogus" in line
    assert not (tmp_path / "svc").exists()


def test_an_empty_admin_token_file_names_the_option(tmp_path: Path) -> None:
    empty = tmp_path / "empty.token"
    empty.write_text("")
    empty.chmod(0o600)
    result = _serve(tmp_path / "svc", _free_port(), "--admin-token-file", str(empty))
    assert result.exit_code == USAGE, result.output
    assert (
        _error_line(result.output)
        == f"error: --admin-token-file: admin token file {empty} is empty"
    )
    assert not (tmp_path / "svc").exists()
    commented = tmp_path / "commented.token"
    commented.write_text("s3cret-token\n# rotated 2026-12-01\n")
    commented.chmod(0o600)
    result = _serve(tmp_path / "svc", _free_port(), "--admin-token-file", str(commented))
    assert result.exit_code == USAGE, result.output
    line = _error_line(result.output)
    assert line == (
        f"error: --admin-token-file: admin token file {commented} holds 2 lines; it must hold "
        "the token alone, on one line"
    )
    assert "s3cret" not in result.output


def test_a_setting_out_of_range_names_its_option(tmp_path: Path) -> None:
    result = _serve(tmp_path / "svc", _free_port(), "--max-body-mb", "-1")
    assert result.exit_code == USAGE, result.output
    assert _error_line(result.output) == "error: --max-body-mb: Input should be greater than 0"
