"""`fedsilo train`: run the coordinator flow once against a running service."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, TypeVar

import typer

from flows.cli.common import (
    TORCH_KINDS,
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
    TokenSource,
    TreeModeOpt,
    TreeParamOpt,
    TreesPerRoundOpt,
    check_model_kind,
    flow_token_source,
)
from flows.cli.errors import UNREACHABLE, one_line
from flows.cli.output import say

if TYPE_CHECKING:  # the CLI imports these when a command runs
    from pydantic import ValidationError
    from pydantic_core import ErrorDetails

    from schemas.contracts.loader import Contract
    from schemas.specs import ModelSpec, RunSpec
    from schemas.tree_params import TreeSpec

T = TypeVar("T")

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
    fine_cells: Annotated[
        int | None,
        typer.Option(
            help="secure-hist only: cells per feature of the public fine grid whose securely "
            "summed counts give the federation's quantile cut points. More cells resolve "
            "heavy-tailed columns (amounts) into more bins at the cost of a longer set-up "
            "vector (features x cells entries). Default: chosen by the service from the "
            "contract's ranges and federation statistics (max_bin / 2 cells per standard "
            "deviation of the widest feature, a power of two from 4096 to 65536).",
        ),
    ] = None,
    grad_bits: Annotated[
        int | None,
        typer.Option(
            help="secure-hist only: quantize every row's gradient and hessian to this many "
            "fractional bits, rounded stochastically (unbiased), so each histogram cell needs "
            "fewer bits on the wire; the model is then close to XGBoost's, not equal to it. "
            "2 gave 4.25x fewer bytes than 64-bit cells on 1M rows at the lossless AUC "
            "(bench/secure_hist.py). Default: lossless.",
        ),
    ] = None,
    strategy: StrategyOpt = "fedavg",
    server_lr: Annotated[float, typer.Option(help="Server learning rate.")] = 1.0,
    mu: Annotated[float, typer.Option(help="FedProx proximal weight.")] = 0.0,
    rounds: RoundsOpt = 10,
    local_epochs: LocalEpochsOpt = 1,
    lr: LrOpt = 0.05,
    lr_schedule: Annotated[
        str,
        typer.Option(
            help="constant, or cosine: round r of R trains at lr * (1 + cos(pi (r-1) / R)) / 2. "
            "Silos whose data differ drift toward their own optimum at a constant rate; the "
            "cosine schedule lets FedAvg settle nearer the pooled model (bench/README.md).",
        ),
    ] = "constant",
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
    n_features: Annotated[
        int | None,
        typer.Option(
            help="Deprecated: the width comes from the contract; if given it must match it."
        ),
    ] = None,
    personalize: Annotated[
        str | None,
        typer.Option(
            help="finetune, fedper or ditto (trees: finetune): every silo makes its own model "
            "at the end, kept at the silo; prints global vs personalized vs alone per silo."
        ),
    ] = None,
    distill: DistillOpt = None,
    ensemble: EnsembleOpt = None,
) -> None:
    """Run the coordinator flow once (a Prefect flow run) against a running service. Prefect
    stores a flow run's parameters, so the admin token is never one: the flow gets the path of
    --token-file (a file only its owner can read: `chmod 600`), the name of --token-block (a
    Prefect Secret block), or for --token / FEDSILO_ADMIN_TOKEN the path of a private
    temporary copy that is deleted when the run ends. The model's input width, outputs and
    task come from the federation's published contract `--dataset`."""
    from flows.coordinator import federated_training

    check_model_kind(model)
    if strategy == "scaffold" and personalize == "fedper":
        raise typer.BadParameter(
            "scaffold's control variates cover the whole model; fedper keeps the output layer "
            "at each silo: choose one",
            param_hint="--strategy",
        )
    if lr_schedule not in ("constant", "cosine"):
        raise typer.BadParameter(
            f"{lr_schedule!r}: choose constant or cosine", param_hint="--lr-schedule"
        )
    options = RunOptions(
        federation=federation,
        dataset=dataset,
        model=model,
        hidden=hidden,
        mode=mode,
        trees_per_round=trees_per_round,
        tree_param=tree_param,
        n_features=n_features,
        fine_cells=fine_cells,
        grad_bits=grad_bits,
        strategy={"name": strategy, "server_lr": server_lr, "mu": mu},
        training={
            "local_epochs": local_epochs,
            "lr": lr,
            "lr_schedule": lr_schedule,
            "batch_size": batch_size,
        },
        rounds=rounds,
        min_silos=min_silos,
        round_deadline_s=round_deadline_s,
        ready_timeout_s=ready_timeout_s,
        patience=patience,
        personalize=personalize,
        distill=distill,
        ensemble=ensemble,
        given=given_options(ctx),
    )
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


@dataclass(frozen=True)
class RunOptions:
    """The run options `train` and `schedule` share: what becomes the run's RunSpec.
    `strategy` and `training` hold the StrategySpec and TrainingSpec fields given."""

    federation: str
    dataset: str
    model: str
    hidden: list[int]
    mode: str
    trees_per_round: int
    tree_param: list[str]
    n_features: int | None
    strategy: dict[str, object]
    training: dict[str, object]
    rounds: int
    min_silos: int
    round_deadline_s: float
    ready_timeout_s: float
    patience: int = 0
    secure: bool = True
    fine_cells: int | None = None
    grad_bits: int | None = None
    personalize: str | None = None
    distill: str | None = None
    ensemble: str | None = None
    given: tuple[str, ...] = ()  # options given on the command line (`given_options`)


def run_spec(options: RunOptions, contract: Contract | None = None) -> RunSpec:
    """The RunSpec the coordinator flow builds from `options`, so that what it would refuse
    is a usage error naming the option, before a flow run or a deployment exists.

    Without `contract` the model's width and task are placeholders: this checks what the
    options alone decide, offline. With it, the spec is the run's own."""
    from pydantic import ValidationError

    from schemas.specs import RunSpec, SecureAggregationSpec

    check_kind_options(options.model, options.given)
    if not math.isfinite(options.ready_timeout_s):  # a flow parameter, stored as JSON
        raise typer.BadParameter(
            f"{options.ready_timeout_s}: give a finite number of seconds (0: no wait)",
            param_hint="--ready-timeout-s",
        )
    model, trees = _spec_models(options, contract)
    distill = distill_spec(options.distill)
    needs_stats = contract is not None and contract.pipeline.needs_federation_stats
    try:
        return RunSpec(
            federation=options.federation,
            dataset=options.dataset,
            model=model,  # type: ignore[arg-type]  # a dict is validated as a ModelSpec
            trees=trees,
            strategy=options.strategy,  # type: ignore[arg-type]
            training=options.training,  # type: ignore[arg-type]
            rounds=options.rounds,
            min_silos=options.min_silos,
            round_deadline_s=options.round_deadline_s,
            patience=options.patience,
            secure_aggregation=SecureAggregationSpec(enabled=options.secure and trees is None),
            personalize=personalization(options.personalize),
            distill=distill,
            ensemble=ensemble_spec(options.ensemble),
            federation_statistics=needs_stats or distill is not None,  # as federated_training
        )
    except ValidationError as exc:
        raise spec_error(exc) from exc


def _spec_models(
    options: RunOptions, contract: Contract | None
) -> tuple[ModelSpec | dict[str, object] | None, TreeSpec | None]:
    """(model, trees) of the run: under `contract` its own, else with a placeholder width
    (--n-features or 1) and task, the PyTorch model as fields RunSpec validates by name."""
    o = options
    if contract is not None:
        return run_models(
            o.model, o.mode, o.hidden, o.n_features, o.trees_per_round, o.tree_param, contract,
            o.fine_cells, o.grad_bits,
        )  # fmt: skip
    if o.model in TREE_KINDS:
        width = o.n_features or 1
        trees = tree_spec(
            o.model, o.mode, width, o.trees_per_round, o.tree_param, None, o.fine_cells,
            o.grad_bits,
        )  # fmt: skip
        return None, trees
    return {"kind": o.model, "n_features": o.n_features or 1, "hidden": tuple(o.hidden)}, None


# options only one family of models uses: given to the other, the run would ignore them
TREE_ONLY = ("--mode", "--trees-per-round", "--tree-param", "--fine-cells", "--grad-bits")
TORCH_ONLY = (
    "--hidden",
    "--strategy",
    "--server-lr",
    "--mu",
    "--lr",
    "--local-epochs",
    "--batch-size",
    "--lr-schedule",
)


def given_options(ctx: typer.Context) -> tuple[str, ...]:
    """The options of `ctx`'s command given on its command line (or by their environment
    variable), not left at their defaults."""
    return tuple(
        param.opts[0]
        for param in ctx.command.params
        if param.name is not None
        and (source := ctx.get_parameter_source(param.name)) is not None
        and source.name not in ("DEFAULT", "DEFAULT_MAP")
    )


def check_kind_options(model: str, given: tuple[str, ...]) -> None:
    """Refuse options in `given` that --model's kind would ignore: a run should train what
    was asked for, not something near it."""
    tree = model in TREE_KINDS
    unused = [option for option in given if option in (TORCH_ONLY if tree else TREE_ONLY)]
    if not unused:
        return
    if tree:
        family = f"PyTorch models ({', '.join(TORCH_KINDS)})"
    else:
        family = f"tree models ({', '.join(TREE_KINDS)})"
    one = len(unused) == 1
    rate = "eta" if model == "xgboost" else "learning_rate"
    hint = f"; a tree's learning rate is --tree-param {rate}=0.1" if "--lr" in unused else ""
    raise typer.BadParameter(
        f"{'applies' if one else 'apply'} to {family}; --model {model} would ignore "
        f"{'it' if one else 'them'}{hint}",
        param_hint="/".join(unused),
    )


# RunSpec's fields and the options that set them, for errors: the longest prefix names it
SPEC_OPTIONS: dict[tuple[str, ...], str] = {
    ("federation",): "--federation",
    ("dataset",): "--dataset",
    ("model",): "--model/--hidden",
    ("model", "hidden"): "--hidden",
    ("model", "n_features"): "--n-features",
    ("trees",): "--tree-param/--mode",
    ("strategy",): "--strategy/--mu",
    ("strategy", "name"): "--strategy",
    ("strategy", "server_lr"): "--server-lr",
    ("strategy", "mu"): "--mu",
    ("training", "lr"): "--lr",
    ("training", "local_epochs"): "--local-epochs",
    ("training", "batch_size"): "--batch-size",
    ("training", "lr_schedule"): "--lr-schedule",
    ("rounds",): "--rounds",
    ("min_silos",): "--min-silos",
    ("round_deadline_s",): "--round-deadline-s",
    ("patience",): "--patience",
    ("secure_aggregation",): "--secure/--no-secure",
    ("personalize",): "--personalize",
    ("distill",): "--distill",
    ("ensemble",): "--ensemble",
}


def spec_error(exc: ValidationError, prefix: tuple[str, ...] = ()) -> typer.BadParameter:
    """A run spec's ValidationError as one line naming the options at fault; `prefix` is
    where the model that failed sits in a RunSpec."""
    problems = [_problem(prefix + tuple(map(str, e["loc"])), e) for e in exc.errors()]
    options = list(dict.fromkeys(option for option, _ in problems))
    if len(options) == 1:
        return typer.BadParameter("; ".join(text for _, text in problems), param_hint=options[0])
    return typer.BadParameter("; ".join(f"{o}: {t}" if o else t for o, t in problems))


def _problem(loc: tuple[str, ...], error: ErrorDetails) -> tuple[str | None, str]:
    """(option, message) of one pydantic error at `loc`; a field no option sets is named by
    its path in the spec, an error of the whole spec by none."""
    text = one_line(error["msg"].removeprefix("Value error, "))
    value = error.get("input")
    if loc and isinstance(value, int | float | str):
        text += f" (got {value!r})"
    for n in range(len(loc), 0, -1):
        if loc[:n] in SPEC_OPTIONS:
            return SPEC_OPTIONS[loc[:n]], text
    return ".".join(loc) or None, text


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


def run_models(
    model: str,
    mode: str,
    hidden: list[int],
    n_features: int | None,
    trees_per_round: int,
    tree_param: list[str],
    contract: Contract,
    fine_cells: int | None = None,
    grad_bits: int | None = None,
) -> tuple[ModelSpec | None, TreeSpec | None]:
    """(PyTorch model spec, tree spec) of a run under `contract`, the other one None; a width
    `n_features` that does not fit the contract is a usage error of --n-features."""
    from pydantic import ValidationError

    from flows.run_model import feature_width, model_for_contract

    try:
        if model in TREE_KINDS:
            width = feature_width(contract, n_features)
            return None, tree_spec(
                model, mode, width, trees_per_round, tree_param, contract, fine_cells, grad_bits
            )
        return model_for_contract(model, tuple(hidden), contract, n_features), None  # type: ignore[arg-type]
    except ValidationError as exc:  # the model's own fields (--hidden), not its width
        raise spec_error(exc, ("model",)) from exc
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--n-features") from exc


def distill_spec(kinds: str | None):  # type: ignore[no-untyped-def]
    """The run's DistillSpec for --distill (None without it)."""
    from flows.distill_view import parse_kinds

    return _parsed(kinds, parse_kinds, "--distill")


def ensemble_spec(kinds: str | None):  # type: ignore[no-untyped-def]
    """The run's EnsembleSpec for --ensemble (None without it)."""
    from flows.ensemble_view import parse_ensemble

    return _parsed(kinds, parse_ensemble, "--ensemble")


def _parsed(value: str | None, parse: Callable[[str], T], option: str) -> T | None:
    """`parse(value)`, None without the option; a ValueError is a usage error of `option`."""
    if value is None:
        return None
    try:
        return parse(value)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint=option) from exc


def personalization(method: str | None):  # type: ignore[no-untyped-def]
    """The run's PersonalizationSpec for --personalize (None without it)."""
    from schemas.specs import PersonalizationSpec

    if method is None:
        return None
    if method not in ("finetune", "fedper", "ditto"):
        raise typer.BadParameter(f"unknown method {method!r}", param_hint="--personalize")
    return PersonalizationSpec(method=method)  # type: ignore[arg-type]


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


def tree_spec(  # type: ignore[no-untyped-def]
    kind: str,
    mode: str,
    n_features: int,
    per_round: int,
    raw: list[str],
    contract=None,
    fine_cells: int | None = None,
    grad_bits: int | None = None,
):
    """A validated TreeSpec from the command line; bad parameters are named, not ignored.

    With `contract`, the objective (and num_class) follow the contract's task; `fine_cells`
    (secure-hist only) fixes the fine binning grid instead of the service's choice, and
    `grad_bits` (secure-hist only) quantizes the gradients."""
    import json

    from schemas.tree_params import TreeSpecError, parse_tree_spec, task_fields

    params: dict[str, object] = {}
    for item in raw:
        key, sep, value = item.partition("=")
        if not sep:
            raise typer.BadParameter(f"{item!r} is not KEY=VALUE", param_hint="--tree-param")
        try:
            params[key] = json.loads(value)
        except json.JSONDecodeError:
            params[key] = value
    hist: dict[str, object] = {}
    for option, key, given in (
        ("--fine-cells", "fine_cells", fine_cells),
        ("--grad-bits", "grad_bits", grad_bits),
    ):
        if given is None:
            continue
        if mode != "secure-hist":
            raise typer.BadParameter(
                f"{option} applies to --mode secure-hist, not {mode!r}", param_hint=option
            )
        hist[key] = given
    extra: dict[str, object] = {"secure_hist": hist} if hist else {}
    try:
        return parse_tree_spec(
            {
                "kind": kind,
                "mode": mode,
                "n_features": n_features,
                "trees_per_round": per_round,
                "params": params,
                **(task_fields(contract.task, len(contract.classes)) if contract else {}),
                **extra,
            }
        )
    except TreeSpecError as exc:
        raise typer.BadParameter(str(exc), param_hint="--tree-param/--mode") from exc
