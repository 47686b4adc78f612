"""The run options `train` and `schedule` share, turned into the RunSpec the coordinator flow
will create: checked here, so that what the flow or the service would refuse is a usage error
naming the option (exit 2) before a flow run or a deployment exists."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

import typer

from flows.cli.common import TORCH_KINDS, TREE_KINDS
from flows.cli.errors import one_line

if TYPE_CHECKING:  # the CLI imports these when a command runs
    from pydantic import ValidationError
    from pydantic_core import ErrorDetails

    from schemas.contracts.loader import Contract
    from schemas.specs import ModelSpec, RunSpec
    from schemas.tree_params import TreeSpec

T = TypeVar("T")


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
    dp_noise_multiplier: float | None = None
    dp_clip_norm: float | None = None
    dp_delta: float = 1e-5
    async_buffer: int | None = None
    max_staleness: int | None = None
    staleness_weight: str = "sqrt"
    given: tuple[str, ...] = ()  # options given on the command line (`given_options`)


STRATEGY_OPTIONS = ("server_lr", "mu")
TRAINING_OPTIONS = ("local_epochs", "lr", "lr_schedule", "batch_size")


def command_options(ctx: typer.Context) -> RunOptions:
    """The RunOptions of `train` or `schedule` from the command's own parameters (both take
    every run option, under the field's name); an --n-features of 0 is none given."""
    from dataclasses import fields

    params = ctx.params
    plain = {f.name for f in fields(RunOptions)} - {"strategy", "training", "given"}
    values = {name: params[name] for name in plain if name in params}
    values["n_features"] = params.get("n_features") or None
    return RunOptions(
        **values,
        strategy={"name": params["strategy"], **{k: params[k] for k in STRATEGY_OPTIONS}},
        training={k: params[k] for k in TRAINING_OPTIONS},
        given=given_options(ctx),
    )


def run_spec(options: RunOptions, contract: Contract | None = None) -> RunSpec:
    """The RunSpec the coordinator flow builds from `options`, so that what it would refuse
    is a usage error naming the option, before a flow run or a deployment exists.

    Without `contract` the model's width and task are placeholders: this checks what the
    options alone decide, offline. With it, the spec is the run's own."""
    from pydantic import ValidationError

    from schemas.specs import RunSpec, SecureAggregationSpec

    own_kinds = "--ensemble" if options.ensemble else "--distill" if options.distill else None
    check_kind_options(options.model, options.given, own_kinds)
    schedule = options.training.get("lr_schedule", "constant")
    if schedule not in ("constant", "cosine"):
        raise typer.BadParameter(
            f"{schedule!r}: choose constant or cosine", param_hint="--lr-schedule"
        )
    if options.strategy.get("name") == "scaffold" and options.personalize == "fedper":
        raise typer.BadParameter(
            "scaffold's control variates cover the whole model; fedper keeps the output layer "
            "at each silo: choose one",
            param_hint="--strategy",
        )
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
            privacy=privacy_fields(options),  # type: ignore[arg-type]  # validated as the spec
            asynchronous=async_fields(options),  # type: ignore[arg-type]
        )
    except ValidationError as exc:
        raise spec_error(exc) from exc


DP_OPTIONS = ("--dp-noise-multiplier", "--dp-clip-norm", "--dp-delta")
ASYNC_OPTIONS = ("--async-buffer", "--max-staleness", "--staleness-weight")


def privacy_fields(options: RunOptions) -> dict[str, object] | None:
    """The run's PrivacySpec fields from the --dp-* options (None when none is given)."""
    given = [option for option in DP_OPTIONS if option in options.given]
    if not given:
        return None
    if options.dp_noise_multiplier is None or options.dp_clip_norm is None:
        raise typer.BadParameter(
            "differential privacy needs both --dp-noise-multiplier and --dp-clip-norm",
            param_hint="/".join(given),
        )
    return {
        "noise_multiplier": options.dp_noise_multiplier,
        "clip_norm": options.dp_clip_norm,
        "delta": options.dp_delta,
    }


def async_fields(options: RunOptions) -> dict[str, object] | None:
    """The run's AsyncSpec fields from --async-buffer and its options (None without it)."""
    if options.async_buffer is None:
        stray = [option for option in ASYNC_OPTIONS if option in options.given]
        if stray:
            raise typer.BadParameter(
                "applies to asynchronous rounds: give --async-buffer K too",
                param_hint="/".join(stray),
            )
        return None
    return {
        "buffer_size": options.async_buffer,
        "max_staleness": options.max_staleness,
        "staleness_weight": options.staleness_weight,
    }


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


# options of one global PyTorch model: an --ensemble/--distill run trains each silo's own
# model with fixed local settings (silos.local_models.LocalParams) and steps no global model;
# --hidden stays, it sizes the mlp members
GLOBAL_TORCH_ONLY = tuple(option for option in TORCH_ONLY if option != "--hidden")


def check_kind_options(model: str, given: tuple[str, ...], own_kinds: str | None = None) -> None:
    """Refuse options in `given` that --model's kind, or the run where each silo trains its own
    kind (`own_kinds`: --ensemble or --distill), would ignore: a run should train what was
    asked for, not something near it."""
    if own_kinds is not None:
        _check_own_kinds_options(own_kinds, given)
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


def _check_own_kinds_options(own_kinds: str, given: tuple[str, ...]) -> None:
    unused = [option for option in given if option in GLOBAL_TORCH_ONLY]
    if not unused:
        return
    one = len(unused) == 1
    raise typer.BadParameter(
        f"{'applies' if one else 'apply'} to one global PyTorch model; {own_kinds} trains each "
        f"silo's own model with fixed local settings and would ignore {'it' if one else 'them'} "
        "(--hidden sizes the mlp members)",
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
    ("privacy",): "--dp-noise-multiplier/--dp-clip-norm/--dp-delta",
    ("privacy", "noise_multiplier"): "--dp-noise-multiplier",
    ("privacy", "clip_norm"): "--dp-clip-norm",
    ("privacy", "delta"): "--dp-delta",
    ("asynchronous",): "--async-buffer",
    ("asynchronous", "buffer_size"): "--async-buffer",
    ("asynchronous", "max_staleness"): "--max-staleness",
    ("asynchronous", "staleness_weight"): "--staleness-weight",
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
