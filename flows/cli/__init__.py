"""The `fedsilo` command line: this module builds the typer app from one module per group.

=================  =========================================================================
module             commands
=================  =========================================================================
``demo``           ``fedsilo demo``: the whole federation on this machine
``train``          ``fedsilo train``: the coordinator flow once, against a running service
``lineage``        ``fedsilo lineage verify|show|contributions|export`` and ``fedsilo report``
``schedule``       ``fedsilo schedule``: the coordinator flow as a Prefect deployment
``serve``          ``fedsilo aggregator serve``: the aggregation service
``silo``           ``fedsilo silo start|list|approve|check|enrol|revoke|demo-data``
``runs``           ``fedsilo runs list|show|cancel``
``vertical``       ``fedsilo vertical train|predict|intersect|cancel|show``
``federation``     ``fedsilo federation init|sign-csr|create|list``: CA, federations
``contract``       ``fedsilo contract draft|example|publish|list|show``: data contracts
``predict``        ``fedsilo predict``: a horizontal run's global model on new rows
``common``         options and helpers the groups share
``errors``         one-line errors and exit codes (``FedsiloGroup``)
``output``         markup-safe output, ``--json``, run id prefixes
=================  =========================================================================

The console script is ``fedsilo = "flows.cli:app"``; ``python -m flows.cli`` runs the same app
(the demo starts its processes that way).
"""

from __future__ import annotations

import os
from typing import Annotated

import typer

import flows.cli.aggregator_ops  # noqa: F401  (adds backup/restore/migrate)
from flows.cli.contract import contract_app
from flows.cli.demo import demo
from flows.cli.errors import DEBUG_KEY, FedsiloGroup, exit_codes_epilog
from flows.cli.federation import federation_app
from flows.cli.lineage import lineage_app, report
from flows.cli.model import model_app
from flows.cli.predict import predict
from flows.cli.runs import runs_app
from flows.cli.schedule import schedule
from flows.cli.serve import aggregator_app
from flows.cli.silo import silo_app
from flows.cli.train import train
from flows.cli.vertical import vertical_app
from flows.processes import TELEMETRY_OFF

__all__ = ["app"]

for _k, _v in TELEMETRY_OFF.items():
    os.environ.setdefault(_k, _v)

app = typer.Typer(
    cls=FedsiloGroup,  # one-line errors and documented exit codes for every command
    help="fedsilo: cross-silo federated learning with silo agents, an aggregation service and "
    "verifiable lineage. Start with `fedsilo demo`.",
    epilog=exit_codes_epilog(),
    no_args_is_help=True,
    rich_markup_mode=None,  # help text is literal: "[tls]" and "[...]" must survive
    pretty_exceptions_show_locals=False,
)


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import version

        from schemas.wire import WIRE_VERSION

        typer.echo(f"fedsilo {version('fedsilo')} (wire version {WIRE_VERSION})")
        raise typer.Exit()


@app.callback()
def _root(
    ctx: typer.Context,
    debug: Annotated[
        bool, typer.Option("--debug", help="On an error, print the traceback too.")
    ] = False,
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    ctx.meta[DEBUG_KEY] = debug


# Registration order is the order `fedsilo --help` lists them in.
app.command("demo")(demo)
app.command("train")(train)
app.command("report")(report)
app.command("schedule")(schedule)
app.add_typer(aggregator_app, name="aggregator")
app.add_typer(silo_app, name="silo")
app.add_typer(runs_app, name="runs")
app.add_typer(vertical_app, name="vertical")
app.add_typer(lineage_app, name="lineage")
app.add_typer(federation_app, name="federation")
app.add_typer(contract_app, name="contract")
app.add_typer(model_app, name="model")
app.command("predict")(predict)
