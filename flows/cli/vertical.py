"""`fedsilo vertical train|predict|intersect|cancel|show`: vertical runs with silo agents.

The parties' agents (`fedsilo silo start` with a `[vertical]` section) pick the run up from
their task poll; these commands run the Prefect flow `vertical-secureboost` once (create the
run, watch it to its end) and print what the ledger says of it. `fedsilo runs show RUN` and
`fedsilo lineage show RUN` show a vertical run too.
"""

from __future__ import annotations

from typing import Annotated, Any

import typer

from flows.cli.common import (
    FederationOpt,
    ServiceUrls,
    TokenBlockOpt,
    TokenFileOpt,
    TokenOpt,
    coordinator,
    fail,
    flow_token_source,
)
from flows.cli.output import JsonOpt, emit_json, say
from flows.cli.train import TrainTokenFileOpt, TrainTokenOpt

vertical_app = typer.Typer(
    help="Vertical runs: parties with the same customers and different columns.",
    no_args_is_help=True,
)

ActiveOpt = Annotated[str, typer.Option(help="The party holding the labels (a silo name).")]
PartiesOpt = Annotated[
    list[str], typer.Option("--party", help="A party (silo name); repeat, the active one too.")
]
TimeoutOpt = Annotated[
    float, typer.Option(help="Give up watching after this many seconds without an end.")
]


def _run_flow(
    as_json: bool,
    service_url: list[str],
    token: str | None,
    token_file: Any,
    token_block: str | None,
    **kwargs: Any,
) -> None:
    """Run the flow `vertical-secureboost` once with `kwargs`; print its result."""
    from flows.vertical import vertical_training

    with flow_token_source(token, token_file, token_block) as source:
        try:
            result = vertical_training(
                service_url=service_url,
                token_file=source.file,
                token_block=source.block,
                **kwargs,
            )
        except RuntimeError as exc:  # the run failed: the reason names the party
            raise fail(str(exc)) from exc
    emit_json(result) if as_json else _summary(result)


def _summary(result: dict[str, Any]) -> None:
    run = result["run"]
    if run["mode"] == "psi_size":
        say(
            f"vertical run {run['run_id']} (psi_size): {run['status']}; every party holds "
            f"{run['psi_size']} common customers (each party learned the count, not which)"
        )
        return
    logreg = run["mode"] == "train" and run["params"]["model"] == "logreg"
    done = f"epochs {run['epochs']}" if logreg else f"trees {run['trees']}"
    say(
        f"vertical run {run['run_id']} ({run['mode']}): {run['status']}; intersection "
        f"{run['psi_size']} rows; {done}; model sha256 {run['model_digest']}"
    )
    for t, counts in enumerate(result.get("splits_per_tree") or []):
        say(f"  tree {t}: splits by party {counts}")
    for e in result.get("epochs") or []:
        say(f"  epoch {e['epoch']}: {e['steps']} steps over {e['rows']} rows")


@vertical_app.command("train")
def vertical_train(
    federation: FederationOpt,
    active: ActiveOpt,
    party: PartiesOpt,
    model: Annotated[
        str,
        typer.Option(
            help="secureboost (trees, any number of parties) or logreg (logistic regression: "
            "epochs, exactly two parties)."
        ),
    ] = "secureboost",
    trees: Annotated[int, typer.Option(min=1, help="SecureBoost: boosting rounds (trees).")] = 3,
    depth: Annotated[int, typer.Option(min=1, max=16, help="SecureBoost: maximum tree depth.")] = 3,
    bins: Annotated[
        int, typer.Option(min=2, max=256, help="SecureBoost: histogram bins per feature.")
    ] = 32,
    epochs: Annotated[int, typer.Option(min=1, help="logreg: passes over the aligned rows.")] = 2,
    batch_rows: Annotated[
        int,
        typer.Option(
            min=1,
            help="logreg: aligned rows per mini-batch, 32 to 2048 (fewer would show a row's "
            "residual to the other party).",
        ),
    ] = 1024,
    learning_rate: Annotated[float, typer.Option(help="logreg: gradient step size.")] = 0.5,
    l2: Annotated[float, typer.Option(help="logreg: L2 penalty on the weights.")] = 1e-3,
    predict: Annotated[
        bool,
        typer.Option(
            "--predict",
            help="After training, predict jointly the rows each party lists in its silo.toml "
            "([vertical] predict_data); the active party keeps the predictions.",
        ),
    ] = False,
    timeout_s: TimeoutOpt = 3600.0,
    service_url: ServiceUrls = ["http://127.0.0.1:8700"],
    token: TrainTokenOpt = None,
    token_file: TrainTokenFileOpt = None,
    token_block: TokenBlockOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Train a vertical model with the parties' running agents: PSI on their id columns, then
    SecureBoost (trees whose splits stay with the party that owns the feature) or logistic
    regression (each party's weights stay with it). Each party keeps its half of the model
    in WORKSPACE/vertical/RUN."""
    from pydantic import ValidationError

    from schemas.vertical import VerticalParams, VerticalRunCreate

    if model not in ("secureboost", "logreg"):
        raise typer.BadParameter(f"{model!r}: choose secureboost or logreg", param_hint="--model")
    try:  # refused here, before a run exists: out-of-range values, logreg's two parties
        params = VerticalParams(
            model=model,  # type: ignore[arg-type]  # checked above
            trees=trees,
            depth=depth,
            bins=bins,
            epochs=epochs,
            batch_rows=batch_rows,
            learning_rate=learning_rate,
            l2=l2,
            predict=predict,
        )
        VerticalRunCreate(federation=federation, active=active, parties=party, params=params)
    except ValidationError as exc:
        error = exc.errors()[0]
        where, msg = ".".join(map(str, error["loc"])), error["msg"].removeprefix("Value error, ")
        raise fail(f"{where}: {msg}" if where else msg) from exc
    _run_flow(
        as_json,
        service_url,
        token,
        token_file,
        token_block,
        federation=federation,
        active=active,
        parties=party,
        params=params,
        timeout_s=timeout_s,
    )


@vertical_app.command("predict")
def vertical_predict(
    federation: FederationOpt,
    model_run: Annotated[
        str, typer.Option(help="The finished training run whose model halves the parties use.")
    ],
    timeout_s: TimeoutOpt = 3600.0,
    service_url: ServiceUrls = ["http://127.0.0.1:8700"],
    token: TrainTokenOpt = None,
    token_file: TrainTokenFileOpt = None,
    token_block: TokenBlockOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Joint prediction with a trained vertical model: the same parties align the rows in
    their [vertical] predict_data by PSI and route them through their halves of the trees;
    the active party writes predict-RUN.csv beside its half."""
    from flows.vertical import vertical_run

    trained = vertical_run(coordinator(service_url, token, token_file), model_run)
    _run_flow(
        as_json,
        service_url,
        token,
        token_file,
        token_block,
        federation=federation,
        active=trained.active,
        parties=trained.parties,
        model_run=trained.run_id,
        timeout_s=timeout_s,
    )


@vertical_app.command("intersect")
def vertical_intersect(
    federation: FederationOpt,
    party: PartiesOpt,
    timeout_s: TimeoutOpt = 3600.0,
    service_url: ServiceUrls = ["http://127.0.0.1:8700"],
    token: TrainTokenOpt = None,
    token_file: TrainTokenFileOpt = None,
    token_block: TokenBlockOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Count the customers every party holds (PSI, size only): each party learns the count,
    not which of its ids are common; the ledger records each party's count."""
    _run_flow(
        as_json,
        service_url,
        token,
        token_file,
        token_block,
        federation=federation,
        active=party[0],  # no labels are used; the first party stands in the run's record
        parties=party,
        size_only=True,
        timeout_s=timeout_s,
    )


@vertical_app.command("cancel")
def vertical_cancel(
    run_id: Annotated[str, typer.Argument(help="The vertical run's id.")],
    reason: Annotated[str, typer.Option(help="Why (recorded with the run and in the ledger).")],
    service_url: ServiceUrls = ["http://127.0.0.1:8700"],
    token: TokenOpt = None,
    token_file: TokenFileOpt = None,
) -> None:
    """End a running vertical run as failed (a party that never came, or stopped): the other
    parties' agents stop at their next poll and serve other work."""
    from flows.vertical import cancel_vertical_run

    run = cancel_vertical_run(coordinator(service_url, token, token_file), run_id, reason)
    say(f"vertical run {run.run_id}: {run.status} ({run.reason})")


@vertical_app.command("show")
def vertical_show(
    run_id: Annotated[str, typer.Argument(help="The vertical run's id.")],
    service_url: ServiceUrls = ["http://127.0.0.1:8700"],
    token: TokenOpt = None,
    token_file: TokenFileOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Show a vertical run: its parties, status, intersection and, per tree, who split (per
    epoch, its steps and rows, for logistic regression)."""
    from flows.vertical import lineage_summary, vertical_run

    client = coordinator(service_url, token, token_file)
    run = vertical_run(client, run_id)
    result = {"run": run.model_dump(mode="json"), **lineage_summary(client, run.run_id)}
    if as_json:
        emit_json(result)
        return
    say(
        f"parties {', '.join(run.parties)} (active {run.active}); params "
        f"{run.params.model_dump_json()}"
        + (f"; model of run {run.model_run}" if run.model_run else "")
        + (f"\nreason: {run.reason}" if run.reason else "")
    )
    _summary(result)
