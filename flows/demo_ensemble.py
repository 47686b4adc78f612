"""`fedsilo demo --ensemble`: a FedBoost ensemble of the hospitals' own models
(`schemas.ensemble`).

The first demo silo trains XGBoost, the second an MLP, the third LightGBM, the others a
logistic regression, each on its own rows; the mixture weights are learned from securely
summed gradients. The demo prints, per silo, the ensemble against its own member alone on its
held-out rows, from the silos' signed ``ensembled`` statements (`flows.ensemble_view`).
"""

from __future__ import annotations

from typing import Any

from rich.console import Console

from flows.demo_kinds import mixed_kinds_spec
from flows.ensemble_view import ensemble_table
from schemas.ensemble import EnsembleSpec
from schemas.specs import RunSpec

DEMO_KINDS = ("xgboost", "mlp", "lightgbm")  # the first silos' kinds; the rest train "logreg"
DEMO_ROUNDS = 6  # the members round and five weight rounds


def ensembled(spec: RunSpec, silos: list[str], rounds: int = 0) -> RunSpec:
    """`spec` as an ensemble run across `silos` (a DemoOptionError
    names the options that do not fit)."""
    return mixed_kinds_spec(
        spec,
        silos,
        DEMO_KINDS,
        "--ensemble",
        lambda kinds: {
            "rounds": rounds or DEMO_ROUNDS,
            "ensemble": EnsembleSpec(kinds=kinds).model_dump(),
        },
    )


def print_ensemble(console: Console, result: dict[str, Any]) -> list[dict[str, Any]]:
    """The per-silo table of the run's ensemble; its rows."""
    rows: list[dict[str, Any]] = list(result.get("ensemble") or [])
    table = ensemble_table(rows)
    if table is None:
        return rows
    console.print(table)
    worse = [r["silo"] for r in rows if r["worse_than_member"]]
    if worse:
        console.print(
            f"[yellow]the ensemble did worse than the silo's own member at {', '.join(worse)}"
        )
    console.print(
        f"the ensemble is one artifact ({result.get('model_path')}): every member's bytes, "
        "sha256 and weight. Each member was trained on one silo's rows and is shared with "
        "every silo and the service; the weight gradients were only seen summed"
    )
    return rows
