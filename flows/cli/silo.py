"""`fedsilo silo ...`: the silo operator's commands (start, check, accept-contract, enrol,
demo-data) and the coordinator's (approve, revoke)."""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from flows.cli.common import (
    ServiceUrls,
    SiloConfigOpt,
    TokenFileOpt,
    TokenOpt,
    console,
    coordinator,
    fail,
)
from flows.cli.names import checked_name
from flows.cli.output import JsonOpt, emit_json, say, table, when
from flows.cli.output import out as plain

if TYPE_CHECKING:
    from schemas.wire import SiloOut

silo_app = typer.Typer(
    help="Run and manage silo agents (one per institution).", no_args_is_help=True
)

TLS_SNIPPET = '[tls]\nca = "certs/ca.pem"\ncert = "certs/silo.pem"\nkey = "certs/silo.key"'


@silo_app.command("start")
def silo_start(
    config: SiloConfigOpt,
    max_runs: Annotated[int | None, typer.Option(help="Exit after serving this many runs.")] = None,
) -> None:
    """Start this institution's silo agent: it creates its key on first start, enrols, waits for
    approval, then serves training runs. It only makes outbound connections. One agent per
    workspace: a second one on the same silo.toml refuses to start (exit 2), and so does an
    agent whose privacy budget fails its check or whose silo name the federation knows with
    another key: an operator must act. Ctrl+C stops it with exit 130, SIGTERM with 0; a revoked
    silo's agent stops with 8."""
    from silos.config import load_silo_config
    from silos.exceptions import SiloConfigError

    try:
        cfg = load_silo_config(config)
    except SiloConfigError as exc:
        raise fail(str(exc)) from exc
    if cfg.prefect.api_url:
        os.environ["PREFECT_API_URL"] = cfg.prefect.api_url
        if "prefect.context" in sys.modules:
            # Prefect reads its settings once, when first imported; already imported (a
            # plugin, an embedding process), it must re-read them or silo.toml would not win
            from prefect.context import refresh_global_settings_context

            refresh_global_settings_context()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    from flows.cli.errors import AUTH, INTERRUPTED, REVOKED, silo_refused
    from silos.agent import SiloRevoked, run_agent
    from silos.client_errors import Conflict, Unauthorized
    from silos.exceptions import PrivacyBudgetError
    from silos.workspace_lock import WorkspaceBusy

    try:
        with _sigterm_stops():
            run_agent(str(config), max_runs=max_runs)
    except KeyboardInterrupt as exc:  # Ctrl+C: 130, as the shell reports an interrupt
        say(f"silo {cfg.silo.name}: stopped")
        raise typer.Exit(INTERRUPTED) from exc
    except _Terminated:  # systemd's or docker's stop: a clean stop, exit 0
        say(f"silo {cfg.silo.name}: stopped (SIGTERM)")
    # exit 2 where only an operator can help: systemd does not restart it (infra/systemd)
    except WorkspaceBusy as exc:  # a second agent
        raise fail(str(exc)) from exc
    except PrivacyBudgetError as exc:  # restore the file or reset it, on purpose
        raise fail(str(exc)) from exc
    except Conflict as exc:
        if exc.path != "/v1/enrol":  # the name is taken by another key, for good
            raise
        raise fail(f"the service refused to enrol silo {cfg.silo.name}: {exc.detail}") from exc
    except Unauthorized as exc:  # not the admin token's message: a silo sends none
        raise fail(silo_refused(exc), code=AUTH) from exc
    except SiloRevoked as exc:
        raise fail(str(exc), code=REVOKED) from exc


class _Terminated(BaseException):
    """SIGTERM reached the agent. A BaseException, as KeyboardInterrupt: no `except
    Exception` on the way up may swallow it."""


@contextmanager
def _sigterm_stops() -> Iterator[None]:
    """Turn SIGTERM into `_Terminated` for the block, so that the agent stops as it does on
    Ctrl+C (its flow run ends Crashed, its workspace lock is released, `finally` blocks run)
    and says so. A second SIGTERM meanwhile kills at once. Prefect's own handler, installed
    while a flow runs, passes the signal on to this one."""
    if threading.current_thread() is not threading.main_thread():  # only it gets signals
        yield
        return

    def stop(signum: int, frame: object) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        raise _Terminated

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@silo_app.command("approve")
def silo_approve(
    name: Annotated[str, typer.Argument(help="Silo name as it enrolled.")],
    federation: Annotated[str, typer.Option(help="Federation name.")],
    service_url: ServiceUrls = ["http://127.0.0.1:8700"],
    token: TokenOpt = None,
    token_file: TokenFileOpt = None,
) -> None:
    """Approve an enrolled silo (coordinator): after this its agent may take part in runs."""
    checked_name(federation, "--federation")
    checked_name(name, "silo name")
    approved = coordinator(service_url, token, token_file).approve(federation, name)
    say(
        f"silo {approved.name} in {approved.federation}: {approved.status} "
        f"(key {approved.public_key[:16]}…)"
    )


@silo_app.command("list")
def silo_list(
    federation: Annotated[str, typer.Option(help="Federation name.")],
    service_url: ServiceUrls = ["http://127.0.0.1:8700"],
    token: TokenOpt = None,
    token_file: TokenFileOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """List the federation's silos (coordinator): status, online, last seen, whether the agent
    validated its data and is ready, and the contract version it accepted."""
    checked_name(federation, "--federation")
    silos = coordinator(service_url, token, token_file).silos(federation)
    if as_json:
        emit_json([s.model_dump(mode="json") for s in silos])
        return
    rows = table(
        "silo", "status", "online", "last seen (UTC)", "ready", "contract", "key",
        title=f"silos of {federation} ({len(silos)})",
    )  # fmt: skip
    for s in silos:
        ready = s.ready
        rows.add_row(
            s.name,
            s.status,
            "yes" if s.online else "no",
            when(s.last_seen_at),
            _ready_cell(s),
            "-" if ready is None else f"{ready.contract} {ready.contract_version}",
            s.public_key[:16] + "…",
        )
    plain.print(rows)
    if not silos:
        say(f"no silo has enrolled in {federation} yet: start one with `fedsilo silo start`")


def _ready_cell(silo: SiloOut) -> str:
    """The "ready" column: a revoked silo takes part in nothing, whatever it last reported."""
    if silo.status == "revoked":
        return "no: revoked"
    ready = silo.ready
    return "-" if ready is None else ("yes" if ready.validated else f"no: {ready.detail}")


@silo_app.command("check")
def silo_check_cmd(config: SiloConfigOpt) -> None:
    """Validate this silo's data against the federation's contract and print a pass/fail table
    (plus the path of Great Expectations' HTML data docs); a [data] test_path file gets its own
    table, checked as each round checks it. The contract: [data] contract_path (a draft, before
    publication), else the accepted published version, else the published one fetched from the
    service; the output says which."""
    from flows.cli.errors import err_console
    from flows.silo_check import silo_check

    raise typer.Exit(silo_check(config, console, err_console))


@silo_app.command("accept-contract")
def silo_accept_contract(
    config: SiloConfigOpt,
    version: Annotated[
        str | None,
        typer.Option(help="Version to accept (default: the pin in silo.toml, else the latest)."),
    ] = None,
    yes: Annotated[bool, typer.Option("--yes", help="Accept without asking.")] = False,
) -> None:
    """Review and accept the federation's published data contract (silo operator): fetch it,
    check its signature, show what changed from the version accepted last, ask, record. The
    agent trains only under versions accepted here (or pinned in silo.toml)."""
    from flows.cli.errors import UNREACHABLE
    from flows.contract_accept import accept_contract
    from schemas.contracts.loader import ContractError
    from silos.client_errors import ServiceUnavailable
    from silos.exceptions import SiloConfigError

    try:
        code = accept_contract(
            config, version, yes=yes, say=say, confirm=lambda q: typer.confirm(q, default=False)
        )
    except (SiloConfigError, ContractError) as exc:
        if isinstance(exc.__cause__, ServiceUnavailable):  # exit 5, as every other command
            raise fail(str(exc), code=UNREACHABLE) from exc
        raise fail(str(exc)) from exc
    raise typer.Exit(code)


@silo_app.command("enrol")
def silo_enrol(
    config: Annotated[
        Path | None, typer.Option("--config", help="The silo's silo.toml (with a [tls] section).")
    ] = None,
    federation: Annotated[str | None, typer.Option(help="Without --config: federation.")] = None,
    silo: Annotated[str | None, typer.Option(help="Without --config: silo name.")] = None,
    folder: Annotated[
        Path | None, typer.Option("--dir", help="Without --config: folder for keys and CSR.")
    ] = None,
    token: Annotated[
        str | None,
        typer.Option(envvar="FEDSILO_ENROLMENT_TOKEN", help="The federation's enrolment token."),
    ] = None,
    token_file: Annotated[
        Path | None, typer.Option(help="File holding the enrolment token.")
    ] = None,
) -> None:
    """Create this silo's identity key, TLS key and certificate request (silo operator).
    Send the CSR to the coordinator; put the certificate they return where [tls] cert says."""
    from aggregation.pki import PkiError
    from flows.federation_files import SiloFiles, make_silo_request
    from silos.keys import load_or_create_key

    secret = token or (token_file.read_text().strip() if token_file else "")
    if not secret:
        raise fail("give the enrolment token: --token-file, --token or FEDSILO_ENROLMENT_TOKEN")
    if config is not None:
        files, federation, silo = _files_from_config(config)
    elif federation and silo and folder:
        files = SiloFiles.in_dir(folder)
    else:
        raise fail("give --config silo.toml, or all of --federation, --silo and --dir")
    try:
        identity = load_or_create_key(files.identity_key)
        ed25519 = make_silo_request(files, federation, silo, secret, identity)
    except (PkiError, ValueError) as exc:
        raise fail(str(exc)) from exc
    say(
        f"silo {silo}: certificate request {files.csr}\n  Ed25519 identity key: {ed25519}\n"
        f"  send {files.csr} to the coordinator of {federation}; put the silo.pem and ca.pem "
        f"they return at {files.cert} and {files.ca}, then `fedsilo silo start`"
    )


def _files_from_config(config: Path):  # type: ignore[no-untyped-def]
    """(SiloFiles, federation, silo) from a silo.toml with a [tls] section."""
    from flows.federation_files import SiloFiles
    from silos.config import load_silo_config
    from silos.exceptions import SiloConfigError

    try:
        cfg = load_silo_config(config)
    except SiloConfigError as exc:
        raise fail(str(exc)) from exc
    if cfg.tls is None:
        say(f"add a [tls] section to {config}, e.g.:\n{TLS_SNIPPET}")
        raise fail(f"{config} has no [tls] section (the example above)")
    files = SiloFiles(
        identity_key=cfg.key_path,
        tls_key=cfg.tls.key,
        csr=cfg.tls.cert.with_suffix(".csr"),
        cert=cfg.tls.cert,
        ca=cfg.tls.ca,
    )
    return files, cfg.silo.federation, cfg.silo.name


@silo_app.command("revoke")
def silo_revoke(
    name: Annotated[str, typer.Argument(help="Silo name.")],
    federation: Annotated[str, typer.Option(help="Federation name.")],
    service_url: ServiceUrls = ["http://127.0.0.1:8700"],
    token: TokenOpt = None,
    token_file: TokenFileOpt = None,
    reason: Annotated[
        str | None,
        typer.Option(help="Why (1-2000 characters); kept in the signed ledger and the report."),
    ] = None,
) -> None:
    """Revoke a silo (coordinator): every later request it makes is refused, at once; the
    runs it takes part in go on without it (their open rounds stop waiting for it), and the
    ledger records the revocation (`silo_revoked`). Its name and key stay taken."""
    checked_name(federation, "--federation")
    checked_name(name, "silo name")
    if reason is not None and not 1 <= len(reason) <= 2000:
        raise typer.BadParameter("give 1 to 2000 characters", param_hint="--reason")
    done = coordinator(service_url, token, token_file).revoke(federation, name, reason)
    say(f"silo {done.name} in {done.federation}: {done.status}")


@silo_app.command("demo-data")
def silo_demo_data(
    name: Annotated[str, typer.Argument(help="cleveland, hungary, va_long_beach or switzerland.")],
    out: Annotated[Path, typer.Option(help="File to write: .csv or .parquet.")],
    force: Annotated[bool, typer.Option("--force", help="Replace an existing file.")] = False,
) -> None:
    """Write one UCI heart-disease hospital's rows as a silo's data (to try the topology)."""
    from silos.demo_data import HEART_SILOS, heart_disease_silos

    if name not in HEART_SILOS:
        raise fail(f"no demo hospital {name!r}; choose from {sorted(HEART_SILOS)}")
    suffix = out.suffix.lower()
    if suffix not in (".csv", ".parquet"):
        raise fail(f"{out}: unsupported file type {out.suffix!r}; name a .csv or .parquet file")
    # --out often names the silo's data path: never replace a real table by accident
    if out.exists() and not force:
        raise fail(f"{out} already exists; choose another --out, or pass --force to replace it")
    rows = heart_disease_silos()[name]
    out.parent.mkdir(parents=True, exist_ok=True)
    if suffix == ".csv":
        rows.to_csv(out, index=False)
    else:
        rows.to_parquet(out, index=False)
    say(f"{name}: {len(rows)} rows in {out}")


@silo_app.command("reset-privacy-budget")
def silo_reset_privacy_budget(
    config: SiloConfigOpt,
    reason: Annotated[
        str, typer.Option(help="Why the budget is reset (recorded in the signed budget file).")
    ],
    discard_valid_budget: Annotated[
        bool,
        typer.Option(
            "--discard-valid-budget",
            help="Reset even though the budget file verifies: its spent rounds are forgotten.",
        ),
    ] = False,
) -> None:
    """Start this silo's privacy budget again from zero after its signed budget file failed its
    check (a hand edit, a lost file). The rejected file is kept beside it and the reset, with
    your reason, is recorded in the new signed state. A budget that verifies is refused unless
    --discard-valid-budget, and so is any reset while the silo's agent runs (stop it first).
    Restoring the file from a backup is the better fix when one exists."""
    from silos import privacy_budget, workspace_lock
    from silos.config import load_silo_config
    from silos.exceptions import PrivacyBudgetError, SiloConfigError

    try:
        cfg = load_silo_config(config)
        # never beside a running agent: it would spend from the budget being replaced
        with workspace_lock.held(cfg.workspace):
            kept = privacy_budget.reset(cfg, reason, discard_valid=discard_valid_budget)
    except (SiloConfigError, PrivacyBudgetError, workspace_lock.WorkspaceBusy, ValueError) as exc:
        raise fail(str(exc)) from exc
    where = f"; the previous file is kept as {kept}" if kept else ""
    console.print(f"silo {cfg.silo.name}: privacy budget reset{where}", markup=False)


@silo_app.command("vertical")
def silo_vertical(
    config: SiloConfigOpt,
    run: Annotated[str, typer.Option(help="The vertical run's id (the coordinator's).")],
    contract: Annotated[
        str | None,
        typer.Option(
            help="This party's vertical contract (schemas/contracts/vertical); default: "
            "[vertical] contract in silo.toml."
        ),
    ] = None,
    predict_data: Annotated[
        Path | None, typer.Option(help="Rows to predict jointly once the model is trained.")
    ] = None,
    model: Annotated[
        Path | None,
        typer.Option(
            help="Predict instead of train: this party's half of a trained model (the folder "
            "a training run wrote); rows to predict: [vertical] predict_data, else the data."
        ),
    ] = None,
) -> None:
    """Take part in one vertical run by hand, without the agent (operators, debugging): the
    running agent does this by itself when a run names its silo and silo.toml has a
    [vertical] section. Uses this silo's identity and data ([vertical] data, else [data]
    path): PSI on the contract's id column, the run's model with the run's hyperparameters
    (the coordinator's: what the run's record and the ledger show), joint prediction, all
    through the service's relay (silos/vertical/agent_role.py). Output lands in
    WORKSPACE/vertical/RUN."""
    from silos.config import load_silo_config
    from silos.exceptions import SiloConfigError
    from silos.vertical import agent_role, predict_role

    try:
        cfg = load_silo_config(config)
    except SiloConfigError as exc:
        raise fail(str(exc)) from exc
    data = cfg.vertical.data if cfg.vertical and cfg.vertical.data else cfg.data.path
    contract = contract or (cfg.vertical.contract if cfg.vertical else None)
    if contract is None:
        raise fail(f"give --contract, or a [vertical] section with contract in {config}")
    if model is not None:
        args = ["--service", cfg.service.urls[0], "--federation", cfg.silo.federation]
        args += ["--silo", cfg.silo.name, "--key", str(cfg.key_path), "--run", run]
        rows = cfg.vertical.predict_data if cfg.vertical and cfg.vertical.predict_data else data
        args += ["--data", str(rows), "--contract", contract, "--model", str(model)]
        if predict_role.main(args):
            raise typer.Exit(1)
        return
    args = ["--service", cfg.service.urls[0], "--federation", cfg.silo.federation]
    args += ["--silo", cfg.silo.name, "--key", str(cfg.key_path), "--run", run]
    args += ["--data", str(data), "--contract", contract]
    args += ["--out", str(cfg.workspace / "vertical" / run)]
    args += ["--predict-data", str(predict_data)] if predict_data else []
    if agent_role.main(args):
        raise typer.Exit(1)
