"""`fedsilo train`: run the coordinator flow once against a running service."""

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
    TokenSource,
    TreeModeOpt,
    TreeParamOpt,
    TreesPerRoundOpt,
    check_model_kind,
    flow_token_source,
)
from flows.cli.errors import UNREACHABLE
from flows.cli.output import say
from flows.cli.run_options import command_options, run_spec

# `train` says what happens to the token: Prefect stores a flow run's parameters.
TrainTokenOpt = Annotated[
    str | None,
    typer.Option(
        "--token",
        envvar="FEDSILO_ADMIN_TOKEN",
        help="Coordinator's admin token; the flow gets the path of a private temporary copy "
        "(0600, deleted after the run), never the value. Prefer --token-file or --token-block. "
        "An explicit --token, --token-file or --token-block beats FEDSILO_ADMIN_TOKEN.",
    ),
]
TrainTokenFileOpt = Annotated[
    Path | None,
    typer.Option(
        "--token-file",
        help="File holding the admin token, readable only by its owner (chmod 600; the service "
        "writes WORKSPACE/admin.token so); the flow gets its path. Beats FEDSILO_ADMIN_TOKEN.",
    ),
]


DistillOpt = Annotated[
    str | None,
    typer.Option(
        help="FedDistill across model kinds: SILO=KIND pairs, e.g. "
        "'default=logreg,cleveland=xgboost,hungary=mlp' (kinds: logreg, mlp, xgboost, "
        "lightgbm; --hidden sizes the mlp). Each silo trains its own kind and they exchange "
        "only securely averaged soft labels on synthetic reference rows; no global model.",
    ),
]


EnsembleOpt = Annotated[
    str | None,
    typer.Option(
        help="FedBoost ensemble: SILO=KIND pairs, e.g. 'default=xgboost,hungary=mlp' (kinds: "
        "logreg, mlp, xgboost, lightgbm; --hidden sizes the mlp). Each silo trains its own "
        "member on its rows (shared with every silo); round 1 collects the members, the other "
        "rounds learn the mixture weights from securely summed gradients.",
    ),
]


def train(
    ctx: typer.Context,
    federation: FederationOpt,
    dataset: DatasetOpt,
    model: ModelOpt = "logreg",
    hidden: HiddenOpt = [],
    mode: TreeModeOpt = "bagging",
    trees_per_round: TreesPerRoundOpt = 3,
    tree_param: TreeParamOpt = [],
    fine_cells: FineCellsOpt = None,
    grad_bits: GradBitsOpt = None,
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
    output_dir: Annotated[Path, typer.Option(help="Where the final model is saved.")] = Path(
        "models"
    ),
    service_url: ServiceUrls = ["http://127.0.0.1:8700"],
    token: TrainTokenOpt = None,
    token_file: TrainTokenFileOpt = None,
    token_block: TokenBlockOpt = None,
    n_features: Annotated[
        int | None,
        typer.Option(
            help="Deprecated: the width comes from the contract; if given it must match it."
        ),
    ] = None,
    personalize: PersonalizeOpt = None,
    distill: DistillOpt = None,
    ensemble: EnsembleOpt = None,
    secure: SecureOpt = True,
    dp_noise_multiplier: DpNoiseOpt = None,
    dp_clip_norm: DpClipOpt = None,
    dp_delta: DpDeltaOpt = 1e-5,
    async_buffer: AsyncBufferOpt = None,
    max_staleness: MaxStalenessOpt = None,
    staleness_weight: StalenessWeightOpt = "sqrt",
) -> None:
    """Run the coordinator flow once (a Prefect flow run) against a running service. Prefect
    stores a flow run's parameters, so the admin token is never one: the flow gets the path of
    --token-file (a file only its owner can read: `chmod 600`), the name of --token-block (a
    Prefect Secret block), or for --token / FEDSILO_ADMIN_TOKEN the path of a private
    temporary copy that is deleted when the run ends. The model's input width, outputs and
    task come from the federation's published contract `--dataset`."""
    from flows.coordinator import federated_training

    check_model_kind(model)
    options = command_options(ctx)  # every run option above, by name (ctx.params)
    run_spec(options)  # what the options alone decide is refused before contacting anyone
    check_prefect_api()
    with flow_token_source(token, token_file, token_block) as source:
        contract = service_contract(service_url, source, federation, dataset)
        spec = run_spec(options, contract)  # the run the flow will create, checked now
        result = federated_training(
            service_urls=service_url,
            admin_token_file=source.file,
            admin_token_block=source.block,
            federation=federation,
            dataset=dataset,
            model=spec.model,
            trees=spec.trees,
            secure_aggregation=spec.secure_aggregation,
            privacy=spec.privacy,
            asynchronous=spec.asynchronous,
            strategy=spec.strategy,
            training=spec.training,
            rounds=spec.rounds,
            min_silos=spec.min_silos,
            round_deadline_s=spec.round_deadline_s,
            patience=spec.patience,
            output_dir=str(output_dir),
            ready_timeout_s=ready_timeout_s,
            show_progress=True,
            personalize=spec.personalize,
            distill=spec.distill,
            ensemble=spec.ensemble,
        )
    if not isinstance(result, dict):  # a flow that ends Cancelled raises when called; be sure
        raise typer.Exit(1)
    say(  # one line, whatever the terminal's width: scripts read it
        f"run {result['run_id']}: model {result['model_path']} sha256 {result['model_sha256']}"
    )
    show_kind_tables(result)


def check_prefect_api() -> None:
    """Refuse to start when PREFECT_API_URL names a Prefect server that does not answer: the
    flow run (or deployment) would fail at its first call to it. Exit 5, as an unreachable
    service."""
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL

    from flows.cli.common import fail

    url = PREFECT_API_URL.value()
    if not url:
        return  # Prefect runs the flow on a temporary server of its own
    with get_client(sync_client=True) as client:
        error = client.api_healthcheck()
    if error is not None:
        raise fail(
            f"the Prefect API at {url} did not answer ({error}); start it with `prefect server "
            "start`, or point PREFECT_API_URL at a running one",
            UNREACHABLE,
        )


def show_kind_tables(result: dict) -> None:  # type: ignore[type-arg]
    """The run's personalization, distillation and ensemble tables, those it has."""
    from flows.cli.common import console
    from flows.distill_view import distill_table
    from flows.ensemble_view import ensemble_table
    from flows.personalization_view import personalization_table

    tables = (
        personalization_table(list(result.get("personalized") or [])),
        distill_table(list(result.get("distilled") or [])),
        ensemble_table(list(result.get("ensemble") or [])),
    )
    for table in tables:
        if table is not None:
            console.print(table)


def service_contract(service_url: list[str], source: TokenSource, federation: str, dataset: str):  # type: ignore[no-untyped-def]
    """The contract the run trains under (`flows.run_model.run_contract`), errors as usage."""
    from flows.admin_token import resolve_admin_token
    from flows.run_model import run_contract
    from flows.service_client import CoordinatorClient
    from schemas.contracts.loader import ContractError

    client = CoordinatorClient(service_url, token=resolve_admin_token(source.file, source.block))
    try:
        return run_contract(client, federation, dataset)
    except ContractError as exc:
        raise typer.BadParameter(str(exc), param_hint="--dataset") from exc
