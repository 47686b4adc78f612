"""The report's sections for runs where every silo trains its own kind of model: FedBoost
ensembles (`schemas.ensemble`) and FedDistill (`schemas.distill`).

Rows come from the ledger: the service's ``aggregate`` entries (an ensemble's members and
mixture weights after each round) and the silos' signed ``ensembled`` / ``distilled``
statements, read through the same views `fedsilo runs show` prints (`flows.ensemble_view`,
`flows.distill_view`), so the report and the terminal never disagree.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from flows.distill_view import distill_rows, distilled_statements
from flows.ensemble_view import ensemble_rows
from flows.lineage_view import RunView, as_dict, as_list, payload_of
from flows.report_plots import ensemble_weights_figure
from flows.report_sections import METRIC_HEADINGS
from schemas.distill_statement import STATEMENT_KIND as DISTILLED
from schemas.ensemble import STATEMENT_KIND as ENSEMBLED

ENSEMBLE_THREAT = (
    "Each member was trained on one silo's rows and is shared with every silo and the "
    "service, so it reveals what any model trained on those rows reveals; the mixture-weight "
    "gradients reached the service only summed through secure aggregation."
)

# what reading a malformed payload raises (pydantic's ValidationError is a ValueError)
_MALFORMED = (ValidationError, ValueError, KeyError, TypeError)


def _unreadable(kind: str, exc: Exception) -> str:
    first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return (
        f"an aggregate entry or {kind} statement of this run does not parse ({first}); the "
        "per-silo rows are left out: see the verification above and the ledger entries below"
    )


@dataclass(frozen=True)
class WeightPoint:
    """The mixture weights after one round's ``aggregate`` entry (round 1: uniform)."""

    round: int
    weights: dict[str, float]


def _weight_trajectory(view: RunView) -> list[WeightPoint]:
    points = []
    for a in view.aggregates:
        members = [m for m in as_list(a, "ensemble") if isinstance(m, dict)]
        if members and isinstance(a.get("round"), int):
            weights = {
                str(m.get("silo")): float(m["weight"])
                for m in members
                if isinstance(m.get("weight"), int | float)
            }
            points.append(WeightPoint(a["round"], weights))
    return sorted(points, key=lambda p: p.round)


def _n_train(view: RunView) -> dict[str, Any]:
    """Silo -> its member's training rows: the members round's contributors (whose digest is
    the member's sha256) carry each silo's n_train."""
    for a in view.aggregates:
        if as_list(a, "ensemble"):
            return {
                str(c.get("silo")): c.get("n_examples")
                for c in as_list(a, "contributors")
                if isinstance(c, dict)
            }
    return {}


def _signed(view: RunView) -> dict[str, dict[str, Any]]:
    """Silo -> the payload of its latest ``ensembled`` statement."""
    return {
        str(p.get("silo")): p for p in (payload_of(e) for e in view.entries if e.kind == ENSEMBLED)
    }


def ensemble(view: RunView) -> dict[str, Any] | None:
    """The ensemble section: members (silo, kind, sha256, n_train, final weight, the ensemble
    vs the member alone on the silo's held-out rows), the weight plot, the threat model.
    None when the run is not an ensemble run."""
    if view.spec.get("ensemble") is None:
        return None
    unreadable = None
    try:
        rows = ensemble_rows(view.entries)
    except _MALFORMED as exc:  # the report still renders; the reviewer is told why rows lack
        rows, unreadable = [], _unreadable(ENSEMBLED, exc)
    n_train, signed = _n_train(view), _signed(view)
    members = []
    for r in rows:
        statement = signed.get(r["silo"], {})
        named = statement.get("member_sha256")
        members.append(
            {
                **r,
                "n_train": n_train.get(r["silo"]),
                "ensemble_loss": statement.get("ensemble_loss"),
                "member_loss": statement.get("member_loss"),
                # the statement names the member the silo scored: it must be the ledger's
                "sha_mismatch": bool(named and r["member_sha256"] and named != r["member_sha256"]),
            }
        )
    trajectory = _weight_trajectory(view)
    silos = [m["silo"] for m in members] or sorted({s for p in trajectory for s in p.weights})
    return {
        "members": members,
        "worse": [m["silo"] for m in members if m["worse_than_member"]],
        "weight_rounds": max(0, len(trajectory) - 1),
        "weights_plot": ensemble_weights_figure([(p.round, p.weights) for p in trajectory], silos),
        "threat": ENSEMBLE_THREAT,
        "unreadable": unreadable,
    }


def distill(view: RunView) -> dict[str, Any] | None:
    """The distillation section: per silo its kind, model sha256 and distilled vs alone
    metrics, and what reached the service. None when the run is not a distillation run."""
    if view.spec.get("distill") is None:
        return None
    spec = as_dict(view.spec, "distill")
    unreadable = None
    try:
        rows = distill_rows(distilled_statements(view.entries))
    except _MALFORMED as exc:
        rows, unreadable = [], _unreadable(DISTILLED, exc)
    reference = spec.get("reference_rows")
    metric = str(rows[0]["metric"]) if rows else "auc"
    return {
        "rows": rows,
        "metric": dict(METRIC_HEADINGS).get(metric, metric),
        "worse": [r["silo"] for r in rows if r["worse_than_alone"]],
        "unreadable": unreadable,
        "statement": (
            "Every silo's model stayed at the silo (the ledger holds only its sha256); only "
            f"the securely averaged soft labels, P(y=1) on {reference} synthetic reference rows "
            "drawn from the data contract and the federation statistics, reached the service."
        ),
    }
