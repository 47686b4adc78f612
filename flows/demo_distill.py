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

from flows.demo_kinds import mixed_kinds_spec
from flows.distill_view import distill_table
from schemas.distill import DistillSpec
from schemas.specs import RunSpec

DEMO_KINDS = ("xgboost", "mlp")  # the first silos' kinds; the rest train "logreg"
DEMO_REFERENCE_ROWS = 512


def distilled(spec: RunSpec, silos: list[str]) -> RunSpec:
    """`spec` as a distillation run across `silos` (a DemoOptionError
    names the options that do not fit)."""
    return mixed_kinds_spec(
        spec,
        silos,
        DEMO_KINDS,
        "--distill",
        lambda kinds: {
            "federation_statistics": True,  # the reference rows are drawn from them
            "distill": DistillSpec(kinds=kinds, reference_rows=DEMO_REFERENCE_ROWS).model_dump(),
        },
    )


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
