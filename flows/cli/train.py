"""`fedsilo train`: run the coordinator flow once against a running service."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from flows.cli.common import (
    TREE_KINDS,
    DatasetOpt,
    FederationOpt,
    HiddenOpt,
    LocalEpochsOpt,
    LrOpt,
    MinSilosOpt,
    ModelOpt,
    ReadyTimeoutOpt,
    RoundDeadlineOpt,
    RoundsOpt,
    ServiceUrls,
    StrategyOpt,
    TokenBlockOpt,
    TreeModeOpt,
    TreeParamOpt,
    TreesPerRoundOpt,
    check_model_kind,
    flow_token_source,
)
from flows.cli.output import say

# `train` says what happens to the token: Prefect stores a flow run's parameters.
TrainTokenOpt = Annotated[
    str | None,
    typer.Option(
        "--token",
        envvar="FEDSILO_ADMIN_TOKEN",
        help="Coordinator's admin token; the flow gets the path of a private temporary copy "
        "(0600, deleted after the run), never the value. Prefer --token-file or --token-block.",
    ),
]
TrainTokenFileOpt = Annotated[
    Path | None,
    typer.Option(
        "--token-file",
        help="File holding the admin token, readable only by its owner (chmod 600; the service "
        "writes WORKSPACE/admin.token so); the flow gets its path.",
    ),
]


def train(
    federation: FederationOpt,
    dataset: DatasetOpt,
    n_features: Annotated[
        int, typer.Option(help="Model input width (from the contract's pipeline).")
    ],
    model: ModelOpt = "logreg",
    hidden: HiddenOpt = [],
    mode: TreeModeOpt = "bagging",
    trees_per_round: TreesPerRoundOpt = 3,
    tree_param: TreeParamOpt = [],
    strategy: StrategyOpt = "fedavg",
    server_lr: Annotated[float, typer.Option(help="Server learning rate.")] = 1.0,
    mu: Annotated[float, typer.Option(help="FedProx proximal weight.")] = 0.0,
    rounds: RoundsOpt = 10,
    local_epochs: LocalEpochsOpt = 1,
    lr: LrOpt = 0.05,
    batch_size: Annotated[int, typer.Option(help="Local batch size.")] = 32,
    min_silos: MinSilosOpt = 2,
    round_deadline_s: RoundDeadlineOpt = 120.0,
    ready_timeout_s: ReadyTimeoutOpt = 900.0,
    patience: Annotated[
        int, typer.Option(help="Stop after this many rounds without improvement; 0 never.")
    ] = 0,
    output_dir: Annotated[Path, typer.Option(help="Where the final model is saved.")] = Path(
        "models"
    ),
    service_url: ServiceUrls = ["http://127.0.0.1:8700"],
    token: TrainTokenOpt = None,
    token_file: TrainTokenFileOpt = None,
    token_block: TokenBlockOpt = None,
) -> None:
    """Run the coordinator flow once (a Prefect flow run) against a running service. Prefect
    stores a flow run's parameters, so the admin token is never one: the flow gets the path of
    --token-file (a file only its owner can read: `chmod 600`), the name of --token-block (a
    Prefect Secret block), or for --token / FEDSILO_ADMIN_TOKEN the path of a private
    temporary copy that is deleted when the run ends."""
    from flows.coordinator import federated_training
    from schemas.specs import ModelSpec, SecureAggregationSpec, StrategySpec, TrainingSpec

    check_model_kind(model)
    trees = None
    if model in TREE_KINDS:
        trees = tree_spec(model, mode, n_features, trees_per_round, tree_param)
    with flow_token_source(token, token_file, token_block) as source:
        result = federated_training(
            service_urls=service_url,
            admin_token_file=source.file,
            admin_token_block=source.block,
            federation=federation,
            dataset=dataset,
            model=None
            if trees
            else ModelSpec(kind=model, n_features=n_features, hidden=tuple(hidden)),  # type: ignore[arg-type]
            trees=trees,
            secure_aggregation=SecureAggregationSpec(enabled=trees is None),
            strategy=StrategySpec(name=strategy, server_lr=server_lr, mu=mu),  # type: ignore[arg-type]
            training=TrainingSpec(local_epochs=local_epochs, lr=lr, batch_size=batch_size),
            rounds=rounds,
            min_silos=min_silos,
            round_deadline_s=round_deadline_s,
            patience=patience,
            output_dir=str(output_dir),
            ready_timeout_s=ready_timeout_s,
            show_progress=True,
        )
    if not isinstance(result, dict):  # a flow that ends Cancelled raises when called; be sure
        raise typer.Exit(1)
    say(  # one line, whatever the terminal's width: scripts read it
        f"run {result['run_id']}: model {result['model_path']} sha256 {result['model_sha256']}"
    )


def tree_spec(kind: str, mode: str, n_features: int, per_round: int, raw: list[str]):  # type: ignore[no-untyped-def]
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
