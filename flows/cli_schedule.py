"""`fedsilo schedule`: deploy the coordinator flow with a cron schedule on a process pool."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from flows.cli_common import ServiceUrls, console


def schedule(
    federation: Annotated[str, typer.Option(help="Federation to train in.")],
    dataset: Annotated[str, typer.Option(help="Data contract name the silos hold.")],
    token_file: Annotated[
        Path,
        typer.Option(
            help="The admin token's file on the worker's machine (only its path is stored).",
        ),
    ],
    cron: Annotated[
        str,
        typer.Option(
            help='Cron schedule, e.g. "0 2 * * *" (02:00 daily); empty = run only on demand.'
        ),
    ] = "",
    timezone: Annotated[str | None, typer.Option(help="IANA zone of the cron schedule.")] = None,
    name: Annotated[str, typer.Option(help="Deployment name.")] = "scheduled",
    pool: Annotated[str, typer.Option(help="Prefect process work pool.")] = "fedsilo-coordinator",
    model: Annotated[str, typer.Option(help="logreg or mlp.")] = "logreg",
    hidden: Annotated[list[int], typer.Option(help="MLP hidden width; repeat per layer.")] = [],
    n_features: Annotated[
        int, typer.Option(help="Model input width; 0 = from the contract's pipeline.")
    ] = 0,
    strategy: Annotated[
        str, typer.Option(help="fedavg, fedprox, fedadam, fedyogi, fedadagrad.")
    ] = "fedavg",
    rounds: Annotated[int, typer.Option(help="Training rounds.")] = 10,
    local_epochs: Annotated[int, typer.Option(help="Local epochs per round.")] = 1,
    lr: Annotated[float, typer.Option(help="Local learning rate.")] = 0.05,
    min_silos: Annotated[int, typer.Option(help="Fewest silos a round may aggregate.")] = 2,
    round_deadline_s: Annotated[
        float, typer.Option(help="Seconds a round waits for silos.")
    ] = 120.0,
    secure: Annotated[bool, typer.Option(help="Secure aggregation of the updates.")] = True,
    output_dir: Annotated[
        Path, typer.Option(help="Where the worker saves each run's final model.")
    ] = Path("models"),
    paused: Annotated[bool, typer.Option(help="Create the schedule paused.")] = False,
    service_url: ServiceUrls = ["http://127.0.0.1:8700"],
) -> None:
    """Deploy the coordinator flow to Prefect with a cron schedule on a process work pool
    (created if missing), and print the command that starts its worker."""
    from flows.schedule import deployment_parameters, schedule_training
    from schemas.contracts.loader import load_contract
    from schemas.specs import ModelSpec, StrategySpec, TrainingSpec
    from silos.features import FeaturePipeline

    if not token_file.is_file():
        raise typer.BadParameter(f"{token_file} is not a file", param_hint="--token-file")
    width = n_features or FeaturePipeline.from_contract(load_contract(dataset)).n_features
    params = deployment_parameters(
        service_urls=service_url,
        token_file=token_file,
        federation=federation,
        dataset=dataset,
        model=ModelSpec(kind=model, n_features=width, hidden=tuple(hidden)).model_dump(  # type: ignore[arg-type]
            mode="json"
        ),
        strategy=StrategySpec(name=strategy).model_dump(mode="json"),  # type: ignore[arg-type]
        training=TrainingSpec(local_epochs=local_epochs, lr=lr).model_dump(mode="json"),
        rounds=rounds,
        min_silos=min_silos,
        round_deadline_s=round_deadline_s,
        output_dir=output_dir,
        secure=secure,
    )
    try:
        done = schedule_training(
            name=name,
            work_pool=pool,
            parameters=params,
            cron=cron or None,
            timezone=timezone,
            paused=paused,
        )
    except ValueError as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from exc
    when = f"on cron {cron!r}" + (f" ({timezone})" if timezone else "") if cron else "on demand"
    console.print(
        f"deployment {done.full_name} ({done.deployment_id}) runs {when} on work pool "
        f"{done.work_pool!r}.\nStart its worker on the coordinator's machine (fedsilo installed, "
        f"PREFECT_API_URL set):\n\n    {done.worker_command()}\n\n"
        f"Run it now:\n\n    {done.run_now_command()}\n"
    )
