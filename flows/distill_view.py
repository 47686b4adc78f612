"""Per-silo results of a distillation run, read from the ledger: distilled vs trained alone.

Each silo signs a ``distilled`` statement (`schemas.distill`) every distillation round with its
model's sha256 and held-out metrics; this module keeps each silo's latest, turns them into rows
and a table, and flags a silo whose distilled model does worse than the same kind alone.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from pydantic import ValidationError
from rich.table import Table
from rich.text import Text

from schemas.distill import DistillSpec
from schemas.distill_statement import STATEMENT_KIND, DistilledPayload
from schemas.lineage import LineageEntry
from schemas.specs import RunSpec
from schemas.task_metrics import higher_is_better, primary_metric


def distilled_statements(entries: Iterable[LineageEntry]) -> dict[str, DistilledPayload]:
    """Silo -> its latest ``distilled`` statement among `entries` (one run's ledger)."""
    out: dict[str, DistilledPayload] = {}
    for entry in entries:
        if entry.kind == STATEMENT_KIND:
            payload = DistilledPayload.model_validate(json.loads(entry.payload))
            if payload.silo not in out or payload.round >= out[payload.silo].round:
                out[payload.silo] = payload
    return dict(sorted(out.items()))


def distill_rows(statements: dict[str, DistilledPayload]) -> list[dict[str, Any]]:
    """One row per silo: its model kind and sha256, the weight of the reference rows it chose,
    the binary primary metric (ROC AUC) of the distilled model and of the same kind trained
    alone, and whether distilling did worse."""
    metric = primary_metric("binary")
    higher = higher_is_better(metric)
    rows = []
    for silo, d in statements.items():
        mine, alone = getattr(d.distilled, metric), getattr(d.alone, metric)
        worse = None
        if mine is not None and alone is not None:
            worse = mine < alone if higher else mine > alone
        rows.append(
            {
                "silo": silo,
                "kind": d.kind,
                "round": d.round,
                "metric": metric,
                "distilled": mine,
                "alone": alone,
                "distilled_loss": d.distilled.loss,
                "alone_loss": d.alone.loss,
                "worse_than_alone": worse,
                "model_sha256": d.model_sha256,
                "soft_labels_version": d.soft_labels_version,
                "weight": d.weight,  # of the reference rows, the silo's choice
            }
        )
    return rows


def distill_table(rows: list[dict[str, Any]]) -> Table | None:
    """The rows as a rich table (None without rows)."""
    if not rows:
        return None
    metric = rows[0]["metric"]
    table = Table(
        "silo",
        "model kind",
        "weight",
        f"distilled {metric}",
        f"alone {metric}",
        "distilled model (stays at the silo)",
        "note",
        title=f"distilled models on each silo's held-out rows ({metric})",
    )
    for r in rows:
        note = Text("distilled below alone", "yellow") if r["worse_than_alone"] else "-"
        table.add_row(
            r["silo"],
            r["kind"],
            "-" if r["weight"] is None else f"{r['weight']:g}",
            _fmt(r["distilled"]),
            _fmt(r["alone"]),
            f"sha256 {r['model_sha256'][:16]}… (round {r['round']})",
            note,
        )
    return table


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def parse_kinds(text: str, reference_rows: int | None = None) -> DistillSpec:
    """A DistillSpec from the CLI's ``default=logreg,cleveland=xgboost,hungary=mlp``
    (ValueError naming what does not parse)."""
    kinds: dict[str, str] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        silo, sep, kind = part.partition("=")
        if not sep or not silo.strip() or not kind.strip():
            raise ValueError(f"{part!r} is not SILO=KIND (e.g. default=logreg,cleveland=xgboost)")
        kinds[silo.strip()] = kind.strip()
    extra = {} if reference_rows is None else {"reference_rows": reference_rows}
    try:
        return DistillSpec.model_validate({"kinds": kinds, **extra})
    except ValidationError as exc:
        raise ValueError("; ".join(str(e["msg"]) for e in exc.errors())) from exc


def run_distill(client: Any, run_id: str, spec: RunSpec) -> list[dict[str, Any]]:
    """`distill_rows` of a run from the service's ledger (`client`: a CoordinatorClient);
    empty when the run is not a distillation run."""
    if spec.distill is None:
        return []
    return distill_rows(distilled_statements(client.ledger(run_id)))
