"""A demo run in which each silo trains its own kind of model (`--ensemble`, `--distill`).

The first demo silos take the given kinds, the others a logistic regression; the MLP members
get a hidden layer when the demo spec has none; the strategy is plain averaging (there is no
global model for a server step to move): the dataset's own strategy is dropped, a --strategy
given is refused.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from pydantic import ValidationError

from flows.demo_refusals import DemoOptionError, spec_refusal
from schemas.specs import RunSpec, StrategySpec

DEMO_HIDDEN = (32,)


class _Options(Protocol):  # flows.demo.DemoOptions's
    strategy: str
    distill: bool
    ensemble: bool


def check_kinds_options(opts: _Options) -> None:
    """Refuse the options a run where each silo trains its own kind would drop (a
    DemoOptionError naming them): the demo runs what was asked for, as `train` does."""
    if opts.distill and opts.ensemble:
        raise DemoOptionError(("--ensemble", "--distill"), "two different runs; pick one")
    option = "--ensemble" if opts.ensemble else "--distill"
    if opts.strategy:
        raise DemoOptionError(
            (option, "--strategy"),
            f"{option} trains each silo's own model: there is no global model for strategy "
            f"{opts.strategy!r} to step; drop --strategy",
        )


def _conflicting(spec: RunSpec) -> list[str]:
    """The demo options that set what a run of per-silo models refuses
    (`RunSpec._own_kinds_fit`); the demo sets those fields only for them."""
    set_by = {
        "--async": spec.asynchronous is not None,
        "--dp": spec.privacy is not None,
        "--plain": not spec.secure_aggregation.enabled,
        "--personalize": spec.personalize is not None,
        "--dataset": spec.model is not None and spec.model.task != "binary",
    }
    return [option for option, given in set_by.items() if given]


def mixed_kinds_spec(
    spec: RunSpec,
    silos: list[str],
    first_kinds: tuple[str, ...],
    option: str,
    extra: Callable[[dict[str, Any]], dict[str, Any]],
) -> RunSpec:
    """`spec` with the per-silo kinds `extra(kinds)` turns into the run's fields (e.g. its
    ``distill`` or ``ensemble`` section); a DemoOptionError names `option` and the options it
    does not fit with."""
    if spec.trees is not None:
        raise DemoOptionError(
            (option, "--model"),
            f"{option} picks each silo's model kind itself; drop --model/--mode",
        )
    kinds: dict[str, Any] = {"default": "logreg"}
    kinds.update(zip(silos, first_kinds, strict=False))
    data = spec.model_dump()
    model = data["model"]
    data.update(
        model={**model, "kind": "mlp", "hidden": model["hidden"] or DEMO_HIDDEN},
        strategy=StrategySpec().model_dump(),
        **extra(kinds),
    )
    try:
        return RunSpec.model_validate(data)
    except ValidationError as exc:
        raise spec_refusal(exc, (option, *_conflicting(spec))) from exc
