"""`fedsilo runs ...`: look at training runs and their rounds (coordinator)."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from flows.cli.common import ServiceUrls, TokenFileOpt, TokenOpt, console, coordinator

runs_app = typer.Typer(help="Look at training runs and their rounds.", no_args_is_help=True)


@runs_app.command("list")
def runs_list(
    service_url: ServiceUrls = ["http://127.0.0.1:8700"],
    token: TokenOpt = None,
    token_file: TokenFileOpt = None,
    federation: Annotated[str | None, typer.Option(help="Only this federation.")] = None,
) -> None:
    """List recent training runs with their status."""
    client = coordinator(service_url, token, token_file)
    table = Table("run", "federation", "status", "model", "rounds", "silos", "created", "reason")
    for r in client.list_runs(federation):
        table.add_row(
            r.run_id,
            r.federation,
            r.status,
            r.spec.model_label,
            str(r.latest_model_version or 0),
            ", ".join(r.participants),
            r.created_at.strftime("%Y-%m-%d %H:%M:%S"),
            r.reason or "",
        )
    console.print(table)


@runs_app.command("show")
def runs_show(
    run_id: Annotated[str, typer.Argument(help="Run id (from `fedsilo runs list`).")],
    service_url: ServiceUrls = ["http://127.0.0.1:8700"],
    token: TokenOpt = None,
    token_file: TokenFileOpt = None,
) -> None:
    """Show one run: its spec, participants and a row per round (who answered, metrics)."""
    from flows.render import round_table

    client = coordinator(service_url, token, token_file)
    run = client.get_run(run_id)
    console.print(
        f"run {run.run_id} in {run.federation}: [bold]{run.status}[/bold] "
        f"{run.reason or ''}\nspec: {run.spec.model_dump_json()}\n"
        f"prefect flow run: {run.prefect_flow_run_id}"
    )
    console.print(round_table(client.rounds(run_id)))
