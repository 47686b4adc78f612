"""`fedsilo demo --personalize`: per-silo models made at the end of the demo's run.

The run's spec gets `personalize` (`schemas.specs.PersonalizationSpec`); each silo agent then
makes its personalized model in the evaluation round and signs its sha256 and held-out metrics
into the ledger, and the demo prints, per silo, the global model against the personalized one
and the silo alone, from those statements (`flows.personalization_view`).
"""

from __future__ import annotations

from typing import Any, Protocol

from pydantic import ValidationError
from rich.console import Console

from flows.demo_refusals import DemoOptionError, spec_refusal
from flows.personalization_view import personalization_table
from schemas.specs import PersonalizationSpec, RunSpec

METHODS = ("finetune", "fedper", "ditto")
FEDPER_HIDDEN = (32,)  # FedPer needs hidden layers: the demo's logreg becomes this MLP


class _Options(Protocol):
    personalize: str  # flows.demo.DemoOptions's: "" or a method


def personalized(spec: RunSpec, opts: _Options) -> RunSpec:
    """`spec` with `personalize.method = opts.personalize` (unchanged for ""); a DemoOptionError
    names the options that do not fit. FedPer on a logistic regression gets the demo's MLP (a
    body)."""
    method = opts.personalize
    if not method:
        return spec
    if method not in METHODS:
        raise DemoOptionError(
            ("--personalize",), f"unknown method {method!r}; choose one of {', '.join(METHODS)}"
        )
    data = spec.model_dump()
    data["personalize"] = PersonalizationSpec(method=method).model_dump()  # type: ignore[arg-type]
    model = data.get("model")
    if method == "fedper" and model is not None and not model["hidden"]:
        data["model"] = {**model, "kind": "mlp", "hidden": FEDPER_HIDDEN}
    try:
        return RunSpec.model_validate(data)
    except ValidationError as exc:  # what personalization does not fit: trees, scaffold
        fault = {"--model": spec.trees is not None, "--strategy": spec.strategy.name == "scaffold"}
        raise spec_refusal(exc, ["--personalize", *(o for o, f in fault.items() if f)]) from exc


def print_personalization(console: Console, result: dict[str, Any]) -> list[dict[str, Any]]:
    """The per-silo table of the run's ``personalized`` statements; its rows."""
    rows: list[dict[str, Any]] = list(result.get("personalized") or [])
    table = personalization_table(rows)
    if table is None:
        return rows
    console.print(table)
    worse = [r["silo"] for r in rows if r["federation_worse"]]
    if worse:
        console.print(
            f"[red]the federation's model does worse than training alone at {', '.join(worse)}"
            "[/red]: its personalized model is the one to use there"
        )
    console.print(
        "the personalized models stay in each silo's workspace (personal/<run_id>/); the ledger "
        "holds only their sha256 and metrics, signed by the silo"
    )
    return rows
