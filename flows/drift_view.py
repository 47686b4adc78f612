"""Drift warnings on the hub: silos that trained although a column strayed from the contract.

A contract with ``on_drift = "warn"`` lets a silo whose column drifts from the reference
statistics pass its gate and train. The silo's signed ``validation_result`` statement names
those checks (expectation and column only: the observed statistics stay with the silo), so the
coordinator reads them from the ledger and shows them beside the round table (`runs show`, the
Prefect round artifact).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from rich.table import Table
from rich.text import Text


def drift_rows(entries: Iterable[Any]) -> list[dict[str, Any]]:
    """One row per (round, silo) whose validation passed with warnings, in ledger order.

    `entries` are the run's ledger entries (`LineageEntry`: ``kind`` and JSON ``payload``).
    """
    rows = []
    for entry in entries:
        if entry.kind != "validation_result":
            continue
        payload = json.loads(entry.payload)
        warnings = payload.get("warnings") or []
        if not warnings:
            continue
        rows.append(
            {
                "round": payload.get("round"),
                "silo": payload.get("silo"),
                "checks": [
                    f"{w.get('expectation')}({w.get('column') or 'table'})" for w in warnings
                ],
            }
        )
    return rows


def drift_by_round(rows: list[dict[str, Any]]) -> dict[int, str]:
    """Round -> "silo: check, check; silo: ..." for a round table's drift column."""
    out: dict[int, list[str]] = {}
    for row in rows:
        out.setdefault(int(row["round"]), []).append(f"{row['silo']}: {', '.join(row['checks'])}")
    return {number: "; ".join(parts) for number, parts in out.items()}


def drift_table(rows: list[dict[str, Any]]) -> Table | None:
    """`runs show`'s table of drift warnings; None when no silo warned."""
    if not rows:
        return None
    table = Table(
        "round",
        "silo",
        "drifted checks (trained anyway: contract on_drift = warn)",
        title="drift warnings",
    )
    for row in rows:
        # silo names and check names come from silos: data, never Rich markup
        table.add_row(str(row["round"]), Text(str(row["silo"])), Text(", ".join(row["checks"])))
    return table
