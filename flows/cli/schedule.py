"""`fedsilo schedule`: deploy the coordinator flow with a cron schedule on a process pool."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from flows.cli.common import (
    AsyncBufferOpt,
    BatchSizeOpt,
    DatasetOpt,
    DpClipOpt,
    DpDeltaOpt,
    DpNoiseOpt,
    FederationOpt,
    FineCellsOpt,
    GradBitsOpt,
    HiddenOpt,
    LocalEpochsOpt,
    LrOpt,
    LrScheduleOpt,
    MaxStalenessOpt,
    MinSilosOpt,
    ModelOpt,
    MuOpt,
    PatienceOpt,
    PersonalizeOpt,
    ReadyTimeoutOpt,
    RoundDeadlineOpt,
    RoundsOpt,
    SecureOpt,
    ServerLrOpt,
    ServiceUrls,
    StalenessWeightOpt,
    StrategyOpt,
    TokenBlockOpt,
    TreeModeOpt,
    TreeParamOpt,
    TreesPerRoundOpt,
    check_model_kind,
    console,
    fail,
)
from flows.cli.errors import one_line
from flows.cli.train import DistillOpt, EnsembleOpt


def schedule(
    ctx: typer.Context,
    federation: FederationOpt,
    dataset: DatasetOpt,
    token_file: Annotated[
        Path | None,
        typer.Option(
            help="The admin token's file on the worker's machine, readable only by its owner "
            "(chmod 600); only its path is stored in Prefect.",
        ),
    ] = None,
    token_block: TokenBlockOpt = None,
    cron: Annotated[
        str,
        typer.Option(
            help='Cron schedule, e.g. "0 2 * * *" (02:00 daily); empty = run only on demand.'
        ),
    ] = "",
    timezone: Annotated[
        str | None,
        typer.Option(help="IANA zone of the --cron schedule, e.g. Europe/Paris (needs --cron)."),
    ] = None,
    name: Annotated[str, typer.Option(help="Deployment name.")] = "scheduled",
    pool: Annotated[str, typer.Option(help="Prefect process work pool.")] = "fedsilo-coordinator",
    model: ModelOpt = "logreg",
    hidden: HiddenOpt = [],
    mode: TreeModeOpt = "bagging",
    trees_per_round: TreesPerRoundOpt = 3,
    tree_param: TreeParamOpt = [],
    fine_cells: FineCellsOpt = None,
    grad_bits: GradBitsOpt = None,
    n_features: Annotated[
        int,
        typer.Option(
            help="Deprecated: the width comes from the contract; if given (not 0) it must match it."
        ),
    ] = 0,
    strategy: StrategyOpt = "fedavg",
    server_lr: ServerLrOpt = 1.0,
    mu: MuOpt = 0.0,
    rounds: RoundsOpt = 10,
    local_epochs: LocalEpochsOpt = 1,
    lr: LrOpt = 0.05,
    lr_schedule: LrScheduleOpt = "constant",
    batch_size: BatchSizeOpt = 32,
    min_silos: MinSilosOpt = 2,
    round_deadline_s: RoundDeadlineOpt = 120.0,
    ready_timeout_s: ReadyTimeoutOpt = 900.0,
    patience: PatienceOpt = 0,
    secure: SecureOpt = True,
    output_dir: Annotated[
        Path, typer.Option(help="Where the worker saves each run's final model.")
    ] = Path("models"),
    paused: Annotated[bool, typer.Option(help="Create the schedule paused.")] = False,
    service_url: ServiceUrls = ["http://127.0.0.1:8700"],
    personalize: PersonalizeOpt = None,
    distill: DistillOpt = None,
    ensemble: EnsembleOpt = None,
    dp_noise_multiplier: DpNoiseOpt = None,
    dp_clip_norm: DpClipOpt = None,
    dp_delta: DpDeltaOpt = 1e-5,
    async_buffer: AsyncBufferOpt = None,
    max_staleness: MaxStalenessOpt = None,
    staleness_weight: StalenessWeightOpt = "sqrt",
) -> None:
    """Deploy the coordinator flow to Prefect with a cron schedule on a process work pool
    (created if missing), and print the command that starts its worker."""
    from flows.cli.common import TokenSource
    from flows.cli.run_options import command_options, run_spec
    from flows.cli.train import check_prefect_api, service_contract
    from flows.schedule import deployment_parameters, schedule_training

    check_model_kind(model)
    _check_schedule(name, pool, cron, timezone)
    options = command_options(ctx)  # every run option above, by name (ctx.params)
    run_spec(options)  # what the options alone decide is refused before contacting anyone
    _check_token_source(token_file, token_block)
    source = TokenSource(file=str(token_file.resolve()) if token_file else None, block=token_block)
    # the width, outputs and task of the contract the federation published
    contract = service_contract(service_url, source, federation, dataset)
    spec = run_spec(options, contract)  # what every scheduled run will create, checked now
    params = deployment_parameters(
        service_urls=service_url,
        token_file=token_file,
        federation=federation,
        dataset=dataset,
        model={} if spec.model is None else spec.model.model_dump(mode="json"),
        strategy=spec.strategy.model_dump(mode="json"),
        training=spec.training.model_dump(mode="json"),
        rounds=spec.rounds,
        min_silos=spec.min_silos,
        round_deadline_s=spec.round_deadline_s,
        patience=spec.patience,
        ready_timeout_s=ready_timeout_s,
        output_dir=output_dir,
        secure=spec.secure_aggregation.enabled,  # off for trees: sealed to the service instead
        token_block=token_block,
    )
    # by alias: Prefect checks the parameters against the flow's schema, which names XGBoost's
    # reg_lambda "lambda" as the spec does
    if spec.trees is not None:
        params["model"] = None
        params["trees"] = spec.trees.model_dump(mode="json", by_alias=True)
    for kind in ("personalize", "distill", "ensemble", "privacy", "asynchronous"):
        if (value := getattr(spec, kind)) is not None:
            params[kind] = value.model_dump(mode="json", by_alias=True)
    check_prefect_api()
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
        raise fail(str(exc)) from exc
    when = f"on cron {cron!r}" + (f" ({timezone})" if timezone else "") if cron else "on demand"
    console.print(
        f"deployment {done.full_name} ({done.deployment_id}) runs {when} on work pool "
        f"{done.work_pool!r}.\nStart its worker on the coordinator's machine (fedsilo installed, "
        f"PREFECT_API_URL set):\n\n    {done.worker_command()}\n\n"
        f"Run it now:\n\n    {done.run_now_command()}\n"
    )


def _check_schedule(name: str, pool: str, cron: str, timezone: str | None) -> None:
    """Refuse a deployment name, pool, cron expression or zone Prefect would refuse, before
    the work pool or anything else is created."""
    from flows.schedule import ScheduleError, checked_schedules

    try:
        checked_schedules(name=name, work_pool=pool, cron=cron or None, timezone=timezone)
    except ScheduleError as exc:
        raise typer.BadParameter(one_line(str(exc)), param_hint=f"--{exc.field}") from exc


def _check_token_source(token_file: Path | None, token_block: str | None) -> None:
    """Refuse a missing Secret block, or a missing or group/world-readable token file, now
    rather than at the first scheduled run."""
    from flows.admin_token import read_token_block, read_token_file
    from flows.exceptions import AdminTokenError

    if (token_file is None) == (token_block is None):
        raise typer.BadParameter(
            "give the admin token's --token-file or its --token-block, exactly one"
        )
    try:
        if token_file is not None:
            read_token_file(token_file)
        else:
            read_token_block(str(token_block))
    except AdminTokenError as exc:
        raise typer.BadParameter(str(exc), param_hint="--token-file/--token-block") from exc
