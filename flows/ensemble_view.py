"""Per-silo results of a FedBoost ensemble run, read from the ledger: the ensemble against
each silo's own member alone and its personal ensemble (kept at the silo), on that silo's
held-out rows (its signed ``ensembled`` statement, `schemas.ensemble`), and the final mixture
weights (the last ``aggregate`` entry)."""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from pydantic import ValidationError
from rich.table import Table
from rich.text import Text

from schemas.ensemble import STATEMENT_KIND, EnsembledPayload, EnsembleSpec
from schemas.lineage import LineageEntry
from schemas.specs import RunSpec


def ensemble_rows(entries: Iterable[LineageEntry]) -> list[dict[str, Any]]:
    """One row per silo: its member's kind, weight and sha256, the ensemble's and the member's
    ROC AUC on the silo's held-out rows, and whether the ensemble did worse than the member;
    its personal ensemble's AUC, sha256 and weights, and whether that did worse than the
    federation's ensemble or the member alone."""
    members: dict[str, dict[str, Any]] = {}
    signed: dict[str, EnsembledPayload] = {}
    for entry in entries:
        payload = json.loads(entry.payload)
        if entry.kind == "aggregate" and "ensemble" in payload:
            members = {m["silo"]: m for m in payload["ensemble"]}  # the latest weights win
        elif entry.kind == STATEMENT_KIND:
            statement = EnsembledPayload.model_validate(payload)
            signed[statement.silo] = statement
    rows = []
    for silo in sorted(set(members) | set(signed)):
        m, s = members.get(silo, {}), signed.get(silo)
        ens = s.ensemble_auc if s else None
        alone = s.member_auc if s else None
        mine = s.personal_auc if s else None
        rows.append(
            {
                "silo": silo,
                "kind": m.get("kind"),
                "weight": m.get("weight"),
                "member_sha256": m.get("sha256"),
                "ensemble_auc": ens,
                "member_auc": alone,
                "worse_than_member": None if ens is None or alone is None else ens < alone,
                # the silo's personal ensemble (weights refined on its validation rows)
                "personal_auc": mine,
                "personal_sha256": s.personal_sha256 if s else None,
                "personal_worse": _below(mine, ens, alone),
            }
        )
    return rows


def _below(mine: float | None, *others: float | None) -> bool | None:
    known = [o for o in others if o is not None]
    return None if mine is None or not known else mine < max(known)


def run_ensemble(client: Any, run_id: str, spec: RunSpec) -> list[dict[str, Any]]:
    """`ensemble_rows` of a run from the service's ledger (`client`: a CoordinatorClient);
    empty when the run is not an ensemble run."""
    if spec.ensemble is None:
        return []
    return ensemble_rows(client.ledger(run_id))


def ensemble_table(rows: list[dict[str, Any]]) -> Table | None:
    """The rows as a rich table (None without rows)."""
    if not rows:
        return None
    table = Table(
        "silo",
        "member",
        "weight",
        "ensemble AUC",
        "member alone AUC",
        "personal AUC",
        "member sha256",
        "note",
        title="FedBoost ensemble on each silo's held-out rows (ROC AUC)",
    )
    for r in rows:
        # styled Text, not markup: `fedsilo runs show` prints with markup off
        notes = [
            text
            for flag, text in (
                (r["worse_than_member"], "ensemble below own member"),
                (r.get("personal_worse"), "personal below ensemble or member"),
            )
            if flag
        ]
        note = Text("; ".join(notes), "yellow") if notes else "-"
        table.add_row(
            r["silo"],
            r["kind"] or "-",
            _fmt(r["weight"]),
            _fmt(r["ensemble_auc"]),
            _fmt(r["member_auc"]),
            _fmt(r.get("personal_auc")),
            f"{r['member_sha256'][:16]}…" if r["member_sha256"] else "-",
            note,
        )
    return table


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def parse_ensemble(text: str) -> EnsembleSpec:
    """An EnsembleSpec from the CLI's ``default=xgboost,hungary=mlp`` (ValueError naming what
    does not parse)."""
    kinds: dict[str, str] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        silo, sep, kind = part.partition("=")
        if not sep or not silo.strip() or not kind.strip():
            raise ValueError(f"{part!r} is not SILO=KIND (e.g. default=xgboost,hungary=mlp)")
        kinds[silo.strip()] = kind.strip()
    try:
        return EnsembleSpec.model_validate({"kinds": kinds})
    except ValidationError as exc:
        raise ValueError("; ".join(str(e["msg"]) for e in exc.errors())) from exc
