"""``fedsilo silo check --config silo.toml``: the validation gate, run locally and offline.

An operator runs it before joining a federation: it reads the silo's config, contract and
table, runs exactly the gate a round would run, prints every expectation as a pass/fail
table with unexpected counts, and says where GX's HTML data docs are. Nothing is sent
anywhere.

Exit codes: 0 the table passes, 1 it fails (or cannot be read), 2 the config or the contract
is invalid.
"""

from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.table import Table

from schemas.contracts import ContractError, load_contract
from schemas.wire import ExpectationOutcome, ValidationSummary
from silos.config import load_silo_config
from silos.data import load_table
from silos.exceptions import DataError, SiloConfigError
from silos.gate import run_gate, summary_for_load_error

EXIT_PASS = 0
EXIT_FAIL = 1
EXIT_CONFIG = 2


def silo_check(config_path: Path, console: Console) -> int:
    """Validate the silo's table against its contract and print the outcome.

    Parameters
    ----------
    config_path
        The silo's ``silo.toml``.
    console
        Where the table and messages go.

    Returns
    -------
    int
        0 pass, 1 fail (including an unreadable table), 2 invalid config or contract.
    """
    try:
        config = load_silo_config(config_path)
        contract = load_contract(config.data.contract)
    except (SiloConfigError, ContractError) as exc:
        console.print(f"[bold red]cannot check:[/] {exc}", markup=True, highlight=False)
        return EXIT_CONFIG
    console.print(
        f"silo [bold]{config.silo.name}[/]: {config.data.path} against contract "
        f"{contract.name} v{contract.version}",
        highlight=False,
    )
    try:
        table = load_table(config.data.path)
    except DataError as exc:
        _print_summary(console, summary_for_load_error(exc, contract), [])
        return EXIT_FAIL
    result = run_gate(table, contract, silo=config.silo.name, workspace=config.workspace)
    _print_summary(console, result.summary, list(result.outcomes))
    if result.data_docs is not None:
        console.print(f"data docs: {result.data_docs}", highlight=False, soft_wrap=True)
    return EXIT_PASS if result.success else EXIT_FAIL


def _print_summary(
    console: Console, summary: ValidationSummary, outcomes: list[ExpectationOutcome]
) -> None:
    rows = outcomes or summary.failed
    table = Table(title=f"{summary.contract} v{summary.contract_version}: {summary.n_rows} rows")
    for header in ("expectation", "column", "result", "unexpected", "%", "detail"):
        table.add_column(header, overflow="fold")
    for o in rows:
        table.add_row(
            o.expectation.removeprefix("expect_"),
            o.column or "(table)",
            "[green]pass[/]" if o.success else "[bold red]FAIL[/]",
            "" if o.unexpected_count is None else str(o.unexpected_count),
            "" if o.unexpected_percent is None else f"{o.unexpected_percent:.2f}",
            "" if o.success else o.detail,
        )
    console.print(table)
    n_failed = len(summary.failed)
    verdict = "[bold green]PASS[/]" if summary.success else f"[bold red]FAIL[/] ({n_failed} failed)"
    console.print(
        f"{verdict}  data sha256 {summary.data_sha256 or '-'}  "
        f"contract sha256 {summary.contract_sha256[:16]}...",
        highlight=False,
    )
