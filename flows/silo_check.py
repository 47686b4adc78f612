"""``fedsilo silo check --config silo.toml``: the validation gate, run locally and offline.

An operator runs it before joining a federation: it reads the silo's config, contract and
table, runs exactly the gate a round would run, prints every expectation as a pass/fail
table with unexpected counts, and says where GX's HTML data docs are. Nothing is sent
anywhere.

Which contract, said in the output: ``[data] contract_path`` (a local draft, before
publication), else the published version this silo accepted (the pin, else the last
accepted), else the published one fetched from the service (a signed read) and not accepted yet.

Exit codes: 0 the table passes, 1 it fails (or cannot be read), 2 the config or the contract
is invalid.
"""

from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.table import Table

from schemas.contracts import Contract, ContractError, load_contract_file
from schemas.wire import ExpectationOutcome, ValidationSummary
from silos import contract_store
from silos.config import SiloConfig, load_silo_config
from silos.data import load_table
from silos.exceptions import DataError, SiloConfigError
from silos.gate import run_gate, summary_for_load_error

EXIT_PASS = 0
EXIT_FAIL = 1
EXIT_CONFIG = 2
# Checks whose detail (observed vs the contract's reference) is worth a line even when they pass.
_OBSERVED = {
    "expect_column_mean_to_be_between",
    "expect_column_stdev_to_be_between",
    "column_frequencies_near_reference",
    "target_classes_present",
}


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
        contract, which = check_contract(config)
    except (SiloConfigError, ContractError) as exc:
        console.print(f"[bold red]cannot check:[/] {exc}", markup=True, highlight=False)
        return EXIT_CONFIG
    console.print(f"contract: {which}", highlight=False, soft_wrap=True)
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


def check_contract(config: SiloConfig) -> tuple[Contract, str]:
    """The contract to check against and a line saying which one it is.

    Raises ContractError when the draft does not parse or names another contract, or no
    published version can be read."""
    name, draft = config.data.contract, config.data.contract_path
    if draft is not None:
        contract = load_contract_file(draft)
        if contract.name != name:
            raise ContractError(
                f"{draft} defines contract {contract.name!r}, but {config.source} names {name!r} "
                "([data] contract): make them agree"
            )
        return contract, f"local draft {draft} (unpublished: the agent will not train on it)"
    try:
        contract = contract_store.contract_for(config)
        return contract, f"published {name} v{contract.version}, accepted at this silo"
    except contract_store.ContractNotAccepted as exc:
        from flows.contract_accept import fetch_published

        try:
            pc = fetch_published(config, None)
        except ContractError as fetch_error:
            raise ContractError(f"{exc}; {fetch_error}") from fetch_error
        contract = contract_store.verify(config, pc)
    if pc.version == config.data.contract_version:
        return contract, f"published {name} v{pc.version}, fetched; pinned in silo.toml"
    return contract, (
        f"published {name} v{pc.version}, fetched from the service and NOT accepted here yet: "
        f"accept it with `{contract_store.accept_command(config, pc.version)}`"
    )


def _print_summary(
    console: Console, summary: ValidationSummary, outcomes: list[ExpectationOutcome]
) -> None:
    rows = outcomes or summary.failed
    table = Table(title=f"{summary.contract} v{summary.contract_version}: {summary.n_rows} rows")
    for header in ("expectation", "column", "result", "unexpected", "%", "detail"):
        table.add_column(header, overflow="fold")
    for o in rows:
        # A warning (on_drift = "warn") passes the gate but shows what strayed.
        verdict = "[yellow]warn[/]" if o.warning else "[green]pass[/]"
        table.add_row(
            o.expectation.removeprefix("expect_"),
            o.column or "(table)",
            verdict if o.success else "[bold red]FAIL[/]",
            "" if o.unexpected_count is None else str(o.unexpected_count),
            "" if o.unexpected_percent is None else f"{o.unexpected_percent:.2f}",
            o.detail if not o.success or o.warning or o.expectation in _OBSERVED else "",
        )
    console.print(table)
    n_failed = len(summary.failed)
    verdict = "[bold green]PASS[/]" if summary.success else f"[bold red]FAIL[/] ({n_failed} failed)"
    console.print(
        f"{verdict}  data sha256 {summary.data_sha256 or '-'}  "
        f"contract sha256 {summary.contract_sha256[:16]}...",
        highlight=False,
    )
