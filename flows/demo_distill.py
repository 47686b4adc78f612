"""`fedsilo demo --distill`: the hospitals train different kinds of models and learn from each
other through securely averaged soft labels on a synthetic reference set (`schemas.distill`).

The first demo silo trains XGBoost, the second an MLP, the others a logistic regression. There
is no global model: the demo prints, per silo, its distilled model against the same kind
trained alone on its held-out rows, from the silos' signed ``distilled`` statements
(`flows.distill_view`).
"""

from __future__ import annotations

from typing import Any

from rich.console import Console

from flows.distill_view import distill_table
from flows.exceptions import DemoError
from schemas.distill import DistillSpec
from schemas.specs import RunSpec, StrategySpec

DEMO_KINDS = ("xgboost", "mlp")  # the first silos' kinds; the rest train "logreg"
DEMO_HIDDEN = (32,)
DEMO_REFERENCE_ROWS = 512


def distilled(spec: RunSpec, silos: list[str]) -> RunSpec:
    """`spec` as a distillation run across `silos` (a DemoError names what does not fit)."""
    if spec.trees is not None:
        raise DemoError("--distill picks each silo's model kind itself; drop --model/--mode")
    kinds: dict[str, Any] = {"default": "logreg"}
    kinds.update(zip(silos, DEMO_KINDS, strict=False))
    data = spec.model_dump()
    model = data["model"]
    data.update(
        model={**model, "kind": "mlp", "hidden": model["hidden"] or DEMO_HIDDEN},
        strategy=StrategySpec().model_dump(),  # no global model for a server step to move
        federation_statistics=True,  # the reference rows are drawn from them
        distill=DistillSpec(kinds=kinds, reference_rows=DEMO_REFERENCE_ROWS).model_dump(),
    )
    try:
        return RunSpec.model_validate(data)
    except ValueError as exc:
        raise DemoError(f"--distill: {exc}") from exc


def print_distill(console: Console, result: dict[str, Any]) -> list[dict[str, Any]]:
    """The per-silo table of the run's ``distilled`` statements; its rows."""
    rows: list[dict[str, Any]] = list(result.get("distilled") or [])
    table = distill_table(rows)
    if table is None:
        return rows
    console.print(table)
    worse = [r["silo"] for r in rows if r["worse_than_alone"]]
    if worse:
        console.print(f"[yellow]distilling did worse than training alone at {', '.join(worse)}")
    console.print(
        "each silo's model stays in its workspace (distill/<run_id>.model); the service saw "
        "only the securely averaged soft labels on the synthetic reference rows (the run's "
        "model file holds them), and the ledger only each model's sha256 and metrics"
    )
    return rows
