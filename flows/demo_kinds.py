"""A demo run in which each silo trains its own kind of model (`--ensemble`, `--distill`).

The first demo silos take the given kinds, the others a logistic regression; the MLP members
get a hidden layer when the demo spec has none; the strategy is plain averaging (there is no
global model for a server step to move).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from flows.exceptions import DemoError
from schemas.specs import RunSpec, StrategySpec

DEMO_HIDDEN = (32,)


def mixed_kinds_spec(
    spec: RunSpec,
    silos: list[str],
    first_kinds: tuple[str, ...],
    option: str,
    extra: Callable[[dict[str, Any]], dict[str, Any]],
) -> RunSpec:
    """`spec` with the per-silo kinds `extra(kinds)` turns into the run's fields (e.g. its
    ``distill`` or ``ensemble`` section); a DemoError names `option` when it does not fit."""
    if spec.trees is not None:
        raise DemoError(f"{option} picks each silo's model kind itself; drop --model/--mode")
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
    except ValueError as exc:
        raise DemoError(f"{option}: {exc}") from exc
