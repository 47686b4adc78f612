"""``fedsilo silo check --config silo.toml``: the validation gate, run locally and offline.

An operator runs it before joining a federation: it reads the silo's config, contract and
table, runs exactly the gate a round would run, prints every expectation as a pass/fail
table with unexpected counts, and says where GX's HTML data docs are. Nothing is sent
anywhere.

Which contract, said in the output: ``[data] contract_path`` (a local draft, before
publication), else the published version this silo accepted (the pin, else the last
accepted), else the published one fetched from the service (a signed read) and not accepted yet.

A held-out test file (``[data] test_path``) is checked too, in its own table, as each round's
gate checks it (`silos.round_gate`): the contract's min_rows does not apply to it.

The silo's identity key (present, owner-only; never created here) and its signed privacy
budget are checked as `silo start` checks them, and the budget's spent rounds and epsilon are
printed per run.

Exit codes: 0 the table (and the test file) pass, 1 one fails (or cannot be read), 2 the config
or the contract is invalid (``error: ...``), 5 the service did not answer (the published
contract could not be fetched).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from schemas.contracts import Contract, ContractError, load_contract_file
from schemas.wire import ExpectationOutcome, ValidationSummary
from silos import contract_store, privacy, privacy_budget
from silos.client_errors import ServiceUnavailable
from silos.config import SiloConfig, load_silo_config
from silos.data import load_table
from silos.exceptions import DataError, PrivacyBudgetError, SiloConfigError
from silos.gate import run_gate, summary_for_load_error
from silos.keys import load_or_create_key, load_silo_key
from silos.lineage_copy import records_path
from silos.round_gate import held_out_failures

EXIT_PASS = 0
EXIT_FAIL = 1
EXIT_CONFIG = 2
EXIT_UNREACHABLE = 5  # as every command: the service did not answer (flows.cli.errors)
DEFAULT_DELTA = 1e-5  # epsilon is shown at the policy's delta, else at this one
# Checks whose detail (observed vs the contract's reference) is worth a line even when they pass.
_OBSERVED = {
    "expect_column_mean_to_be_between",
    "expect_column_stdev_to_be_between",
    "column_frequencies_near_reference",
    "target_classes_present",
}


def silo_check(config_path: Path, console: Console, errors: Console | None = None) -> int:
    """Validate the silo's table (and its held-out test file) against its contract and print
    the outcome.

    Parameters
    ----------
    config_path
        The silo's ``silo.toml``.
    console
        Where the tables and messages go.
    errors
        Where an invalid config or contract is reported (``error: ...``); default `console`.

    Returns
    -------
    int
        0 pass, 1 fail (including an unreadable table), 2 invalid config or contract, 5 the
        service did not answer (fetching the published contract).
    """
    try:
        config = load_silo_config(config_path)
        contract, which = check_contract(config)
    except (SiloConfigError, ContractError) as exc:
        (errors or console).print(Text(f"error: {exc}"), soft_wrap=True)
        return EXIT_UNREACHABLE if _unreachable(exc) else EXIT_CONFIG
    # file names, column names and messages are the silo's own text, never Rich markup
    console.print(Text(f"contract: {which}"), soft_wrap=True)
    own = _check_key_and_budget(console, config)  # what failed of the silo's own files
    passed = _check_file(console, config, contract, config.data.path, config.workspace)
    test_path = config.data.test_path
    if test_path is None:
        if own:
            console.print(Text(f"FAIL: {' and '.join(own)} failed"))
        return EXIT_PASS if passed and not own else EXIT_FAIL
    # the held-out test file, checked as each round's gate checks it (silos.round_gate)
    test_passed = _check_file(
        console, config, contract, test_path, config.workspace / "test_path", held_out=True
    )
    failing = [str(p) for p, ok in ((config.data.path, passed), (test_path, test_passed)) if not ok]
    failing += own
    both = f"{config.data.path} and {test_path}"
    console.print(Text(f"FAIL: {' and '.join(failing)} failed" if failing else f"PASS: {both}"))
    return EXIT_FAIL if failing else EXIT_PASS


def _check_file(
    console: Console,
    config: SiloConfig,
    contract: Contract,
    path: Path,
    workspace: Path,
    *,
    held_out: bool = False,
) -> bool:
    """Run the gate on one file and print its table; True when it passes."""
    what = " (held-out test file, [data] test_path: the contract's min_rows does not apply)"
    console.print(
        Text.assemble(
            "silo ",
            (config.silo.name, "bold"),
            f": {path}{what if held_out else ''} against contract "
            f"{contract.name} v{contract.version}",
        )
    )
    try:
        table = load_table(path)
    except DataError as exc:
        _print_summary(console, summary_for_load_error(exc, contract), [])
        return False
    result = run_gate(table, contract, silo=config.silo.name, workspace=workspace)
    summary, outcomes = result.summary, list(result.outcomes)
    if held_out:
        failed = held_out_failures(summary)
        summary = summary.model_copy(update={"failed": failed, "success": not failed})
        outcomes = [o for o in outcomes if o.success or o in failed]
    _print_summary(console, summary, outcomes)
    if result.data_docs is not None:
        console.print(Text(f"data docs: {result.data_docs}"), soft_wrap=True)
    return summary.success


def _check_key_and_budget(console: Console, config: SiloConfig) -> list[str]:
    """Check the identity key and the privacy budget as `silo start` would, creating and
    writing nothing; print the spent rounds and epsilon. Returns what failed."""
    path = config.key_path
    # what `load_silo_key` takes for a workspace that worked under a key (a signed budget)
    worked = (config.workspace / "privacy" / "signed", records_path(config.workspace))
    try:
        if path.exists():
            load_or_create_key(path)  # an existing file: read and checked, not replaced
        elif any(p.exists() for p in worked):
            load_silo_key(path, config.workspace)  # raises: the workspace worked under a key
        else:
            console.print(Text(f"identity key: {path} not created yet (`silo start` creates it)"))
            return []  # a fresh silo: no budget spent, nothing signed to verify
    except (SiloConfigError, ValueError) as exc:  # permissions, not a key, missing
        console.print(Text(f"error: identity key: {exc}"), soft_wrap=True)
        return ["the identity key"]
    console.print(Text(f"identity key: {path} (owner-only)"), soft_wrap=True)
    try:
        spent = privacy.spent_rounds(config)  # the same verification as `silo start`
    except PrivacyBudgetError as exc:
        console.print(Text(f"error: {exc}"), soft_wrap=True)
        return ["the privacy budget"]
    _print_budget(console, config, spent)
    return []


def _print_budget(console: Console, config: SiloConfig, spent: dict[str, dict[str, Any]]) -> None:
    """The verified budget: rounds, noise multiplier and epsilon per run, and in all."""
    where = privacy_budget.budget_path(config.workspace)
    runs = {rid: e for rid, e in spent.items() if int(e.get("rounds", 0))}
    if not runs:
        console.print(Text(f"privacy budget: {where} verified; no noised round spent"))
        return
    # the policy's delta when it has one; a run's epsilon at the run's own delta may differ
    policy_delta = getattr(config.policy, "delta", None)
    delta = float(policy_delta) if policy_delta else DEFAULT_DELTA
    said = "the policy's delta" if policy_delta else "no delta in [policy]; the runs' may differ"
    console.print(Text(f"privacy budget: {where} verified; epsilon at delta {delta:g} ({said})"))
    counts: dict[float, int] = {}
    for rid, entry in sorted(runs.items()):
        sigma, rounds = float(entry["sigma"]), int(entry["rounds"])
        counts[sigma] = counts.get(sigma, 0) + rounds
        eps = privacy.epsilon({sigma: rounds}, delta)
        console.print(Text(f"  run {rid}: {rounds} rounds at sigma {sigma:g}: epsilon {eps:.3g}"))
    total = privacy.epsilon(counts, delta)
    cap = config.policy.max_epsilon
    of = f" of max_epsilon {cap:g}" if cap is not None else ""
    console.print(Text(f"  all runs: epsilon {total:.3g}{of}"))


def _unreachable(exc: BaseException | None) -> bool:
    """The service did not answer (somewhere down the chain of causes)."""
    while exc is not None:
        if isinstance(exc, ServiceUnavailable):
            return True
        exc = exc.__cause__
    return False


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
        detail = o.detail if not o.success or o.warning or o.expectation in _OBSERVED else ""
        table.add_row(
            Text(o.expectation.removeprefix("expect_")),
            Text(o.column or "(table)"),
            verdict if o.success else "[bold red]FAIL[/]",
            "" if o.unexpected_count is None else str(o.unexpected_count),
            "" if o.unexpected_percent is None else f"{o.unexpected_percent:.2f}",
            Text(detail),  # quotes column names: "['chol [mg/dl]']" stays as written
        )
    console.print(table)
    n_failed = len(summary.failed)
    verdict = "[bold green]PASS[/]" if summary.success else f"[bold red]FAIL[/] ({n_failed} failed)"
    console.print(
        f"{verdict}  data sha256 {summary.data_sha256 or '-'}  "
        f"contract sha256 {summary.contract_sha256[:16]}...",
        highlight=False,
    )
