"""Outcomes that are not bugs end `fedsilo` with their own documented exit code and no
"(unexpected)": a cancelled training run (7, naming the run and why) and a reader that stops
reading the output (`| head`: 141, quietly, as Unix tools end on SIGPIPE)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import typer
from prefect.exceptions import CancelledRun
from typer.testing import CliRunner

from flows.cli.errors import CANCELLED, EXIT_CODES, PIPE_CLOSED, FedsiloGroup, describe
from flows.exceptions import RunCancelled

README = Path(__file__).resolve().parents[2] / "README.md"


def test_a_cancelled_run_names_the_run_and_the_reason() -> None:
    # what calling the coordinator flow raises when it ends Cancelled (flows/coordinator.py)
    code, message = describe(CancelledRun("run 8f0777ab was cancelled: wrong dataset"))
    assert code == CANCELLED == 7
    assert message == (
        "run 8f0777ab was cancelled: wrong dataset; it has no final model "
        "(`fedsilo runs show 8f0777ab` has its rounds)"
    )
    assert describe(RunCancelled("run abc was cancelled during round 3"))[0] == CANCELLED
    # cancelled from the Prefect UI: Prefect's own message, no run id
    assert describe(CancelledRun("Run cancelled."))[1].startswith("Run cancelled; it has no")


def test_the_cancelled_code_is_documented() -> None:
    assert (CANCELLED, PIPE_CLOSED) == (7, 141)
    documented = dict(EXIT_CODES)
    readme = README.read_text(encoding="utf-8")
    for code in (CANCELLED, PIPE_CLOSED):
        assert f"| {code} | " in readme and code in documented


def test_the_readmes_exit_code_table_is_the_clis() -> None:
    readme = README.read_text(encoding="utf-8")
    for code, text in EXIT_CODES:  # `fedsilo --help` prints the same table
        assert f"| {code} | {text.replace('|', chr(92) + '|')} |" in readme, code


def test_a_cancelled_run_ends_the_command_with_one_line() -> None:
    app = typer.Typer(cls=FedsiloGroup)

    @app.command()
    def train() -> None:
        raise CancelledRun("run 8f0777ab was cancelled: wrong dataset")

    @app.command()
    def other() -> None:  # a second command: typer keeps the group
        pass

    result = CliRunner().invoke(app, ["train"])
    assert result.exit_code == CANCELLED
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert lines == [
        "error: run 8f0777ab was cancelled: wrong dataset; it has no final model "
        "(`fedsilo runs show 8f0777ab` has its rounds)"
    ]


def test_a_closed_pipe_ends_quietly_with_141() -> None:
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone before the first line: `fedsilo ... | true`
    try:
        done = subprocess.run(
            [sys.executable, "-m", "flows.cli", "contract", "example", "heart_disease"],
            stdout=write_end,
            stderr=subprocess.PIPE,
            timeout=120,
        )
    finally:
        os.close(write_end)
    assert done.returncode == PIPE_CLOSED, done.stderr.decode()
    assert done.stderr == b""  # no "BrokenPipeError (unexpected)", no "Exception ignored"


def test_the_services_start_refusals_are_bad_input_not_unexpected() -> None:
    """A signing key file others can read, or a database whose ledger triggers are gone: the
    service refuses to start, exit 2, which systemd's unit does not restart forever."""
    from aggregation.service.keys import SigningKeyError
    from aggregation.service.ledger_guard import LedgerGuardMissing
    from flows.cli.errors import USAGE, describe

    for exc in (
        SigningKeyError("svc/signing.key has mode -rw-r--r--: chmod 600 it"),
        LedgerGuardMissing("trigger ledger_no_update is missing"),
    ):
        code, message = describe(exc)
        assert code == USAGE and "unexpected" not in message and str(exc) in message
