"""Per-silo personalization results, read from the ledger: global vs personalized vs alone.

Each silo signs a ``personalized`` statement (`schemas.personalization`) in the run's
evaluation round; this module turns those statements into rows and a table, and flags a silo
for which the federation does worse than training alone (the global model scores below the
silo's local-only model on its held-out rows).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from rich.table import Table

from schemas.lineage import LineageEntry
from schemas.personalization import STATEMENT_KIND, PersonalizedPayload
from schemas.specs import RunSpec
from schemas.task_metrics import higher_is_better, primary_metric


def personalized_statements(entries: Iterable[LineageEntry]) -> dict[str, PersonalizedPayload]:
    """Silo -> its latest ``personalized`` statement among `entries` (one run's ledger)."""
    out: dict[str, PersonalizedPayload] = {}
    for entry in entries:
        if entry.kind == STATEMENT_KIND:
            payload = PersonalizedPayload.model_validate(json.loads(entry.payload))
            out[payload.silo] = payload
    return dict(sorted(out.items()))


def personalization_rows(
    statements: dict[str, PersonalizedPayload], task: str
) -> list[dict[str, Any]]:
    """One row per silo: method, the personalized model's sha256, the task's primary metric for
    the global, personalized and local-only models, and whether the federation did worse than
    the silo alone (`federation_worse`) and the personalized model beat both (`best`)."""
    metric = primary_metric(task)
    higher = higher_is_better(metric)
    rows = []
    for silo, p in statements.items():
        values = {
            "global": getattr(p.global_metrics, metric),
            "personalized": getattr(p.personalized, metric),
            "local_only": getattr(p.local_only, metric),
        }
        best = None
        if None not in values.values():
            others = (values["global"], values["local_only"])
            mine = values["personalized"]
            best = mine >= max(others) if higher else mine <= min(others)
        rows.append(
            {
                "silo": silo,
                "method": p.method,
                "metric": metric,
                **values,
                "federation_worse": p.worse_than_alone(metric, higher),
                "personalized_best": best,
                "model_sha256": p.model_sha256,
                "steps": p.steps,
            }
        )
    return rows


def personalization_table(rows: list[dict[str, Any]]) -> Table | None:
    """The rows as a rich table (None without rows)."""
    if not rows:
        return None
    metric = rows[0]["metric"]
    table = Table(
        "silo",
        "method",
        f"global {metric}",
        f"personalized {metric}",
        f"local-only {metric}",
        "personalized model (stays at the silo)",
        "note",
        title=f"per-silo models on each silo's held-out rows ({metric})",
    )
    for r in rows:
        notes = []
        if r["federation_worse"]:
            notes.append("[red]federation worse than training alone[/red]")
        if r["personalized_best"] is False:
            notes.append("[yellow]personalized below global or local-only[/yellow]")
        table.add_row(
            r["silo"],
            f"{r['method']} ({r['steps']} steps)",
            *(_fmt(r[k]) for k in ("global", "personalized", "local_only")),
            f"sha256 {r['model_sha256'][:16]}…",
            "; ".join(notes) or "-",
        )
    return table


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def run_personalization(client: Any, run_id: str, spec: RunSpec) -> list[dict[str, Any]]:
    """`personalization_rows` of a run from the service's ledger (`client`: a
    CoordinatorClient); empty when the run did not ask for personalization."""
    if spec.personalize is None:
        return []
    task = spec.trees.task if spec.trees is not None else spec.torch_model.task
    return personalization_rows(personalized_statements(client.ledger(run_id)), task)
