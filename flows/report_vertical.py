"""The compliance report of a vertical run (SecureBoost or logistic regression between parties
with the same customers).

What the ledger holds of such a run, and so all the report can show: the parties and which
one holds the labels, each party's intersection (size, and its sha256 unless the run counted
only), per tree which party split which node at what depth (the service records no split
value: the passive parties keep theirs) or, for logistic regression, per epoch its steps and
rows (no weight: each party keeps its own), the sha256 of the active party's half of the model,
the failure with the party that caused it, and the prediction runs that used the model. No
model file exists at the service (each party keeps its half), so there is nothing to re-hash;
the ledger's chain and signatures are verified as for any run.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from flows import report_sections as sections
from flows.lineage_view import RunView, as_dict, as_list, payload_of
from flows.report_checks import AnchorCheck, SiloCopyCheck
from flows.report_html import render
from flows.report_plots import vertical_splits_figure
from schemas.ledger_verify import VerifyReport
from schemas.lineage import LineageEntry

# the digest a run's end records: the active party hashes the half it keeps
HALF_LABEL = "active party's model half sha256 (model-active.json)"
# an older ledger's failure names its party only in the reason ("party 'bureau': ...")
_PARTY_IN_REASON = re.compile(r"^party '([^']+)'")
# the run's params carry both models' fields: the model card shows the trained model's own
_OTHER_MODELS_PARAMS = {
    "secureboost": frozenset({"epochs", "batch_rows", "learning_rate", "l2"}),
    "logreg": frozenset({"trees", "depth", "bins"}),
}


@dataclass(frozen=True)
class TreeLineage:
    """One tree as the ledger records it: (node, party, depth) per split, and its leaves."""

    tree: int
    leaves: int | None
    nodes: tuple[tuple[int, str, int], ...]

    def splits(self, party: str) -> int:
        return sum(1 for _, p, _ in self.nodes if p == party)

    def depths(self, party: str) -> list[int]:
        return sorted({d for _, p, d in self.nodes if p == party})

    @property
    def levels(self) -> int:
        """How many levels of the tree split (0 for a tree that is one leaf)."""
        return max((d for _, _, d in self.nodes), default=-1) + 1


@dataclass
class VerticalView:
    """A vertical run's entries, grouped by what a reviewer asks."""

    run_id: str
    started: dict[str, Any] = field(default_factory=dict)
    psi: dict[str, dict[str, Any]] = field(default_factory=dict)
    trees: list[TreeLineage] = field(default_factory=list)
    epochs: list[dict[str, int | None]] = field(default_factory=list)
    finish: dict[str, Any] | None = None
    status: str = "in progress"

    @property
    def parties(self) -> list[str]:
        return [str(p) for p in as_list(self.started, "parties")]

    @property
    def mode(self) -> str:
        return str(self.started.get("mode") or "train")

    @property
    def logreg(self) -> bool:
        """A logistic regression training run: epochs, not trees."""
        return self.mode == "train" and as_dict(self.started, "params").get("model") == "logreg"

    @property
    def failed_party(self) -> str | None:
        """The party whose refusal or failure ended the run (None: not failed, or the
        coordinator cancelled it)."""
        if self.status != "failed" or self.finish is None:
            return None
        if isinstance(self.finish.get("party"), str):
            return str(self.finish["party"])
        found = _PARTY_IN_REASON.match(str(self.finish.get("reason") or ""))
        return found.group(1) if found else None


def is_vertical(view: RunView) -> bool:
    return any(e.kind == "vertical_started" for e in view.entries)


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _tree(p: dict[str, Any]) -> TreeLineage:
    nodes = tuple(
        (_int(n.get("node")) or 0, str(n.get("party")), _int(n.get("depth")) or 0)
        for n in as_list(p, "nodes")
        if isinstance(n, dict)
    )
    return TreeLineage(_int(p.get("tree")) or 0, _int(p.get("leaves")), nodes)


def vertical_view(entries: Sequence[LineageEntry], run_id: str) -> VerticalView:
    """Group the ledger entries of vertical run `run_id`."""
    view = VerticalView(run_id)
    for entry in entries:
        if entry.run_id != run_id:
            continue
        p = payload_of(entry)
        if entry.kind == "vertical_started":
            view.started = p
        elif entry.kind == "vertical_psi":
            view.psi[str(p.get("party"))] = p
        elif entry.kind == "vertical_tree":
            view.trees.append(_tree(p))
        elif entry.kind == "vertical_epoch":
            view.epochs.append({k: _int(p.get(k)) for k in ("epoch", "steps", "rows")})
        elif entry.kind in ("vertical_finished", "vertical_failed"):
            view.finish, view.status = p, entry.kind.removeprefix("vertical_")
    return view


def parties(view: VerticalView) -> list[dict[str, Any]]:
    """Per party: its role, its intersection, its splits over every tree, its failure."""
    active = view.started.get("active")
    rows = []
    for party in view.parties:
        if view.mode == "psi_size":
            role = "counts the intersection (no labels used)"
        else:
            role = "active: holds the labels" if party == active else "passive: holds features"
        psi = view.psi.get(party, {})
        rows.append(
            {
                "party": party,
                "role": role,
                "psi_size": _int(psi.get("size")),
                "psi_digest": psi.get("digest"),
                "splits": sum(t.splits(party) for t in view.trees),
                "failure": (view.finish or {}).get("reason") if view.failed_party == party else "",
            }
        )
    return rows


def psi_summary(view: VerticalView) -> str:
    """One sentence on the intersection: hashed, size only, disagreeing, or not reached."""
    if not view.psi:
        return "No party reported an intersection (the run ended before it)."
    sizes = {_int(p.get("size")) for p in view.psi.values()}
    digests = {p.get("digest") for p in view.psi.values()}
    missing = [p for p in view.parties if p not in view.psi]
    waiting = f" {', '.join(missing)} reported none." if missing else ""
    if len(sizes) > 1 or len(digests) > 1:
        return "The parties reported DIFFERENT intersections: the run failed on it." + waiting
    size = next(iter(sizes))
    if digests == {None}:
        return (
            f"Size only: each party learned that {size} customers are common, not which; no "
            "intersection hash exists." + waiting
        )
    return (
        f"Every reporting party found the same {size} common customers (same sha256 of the "
        "intersection); the ids never left a party in the clear." + waiting
    )


def tree_rows(view: VerticalView) -> list[dict[str, Any]]:
    """Per tree: leaves, levels, and per party its splits and the depths it split at."""
    return [
        {
            "tree": t.tree,
            "leaves": t.leaves,
            "levels": t.levels,
            "per_party": [(t.splits(p), t.depths(p)) for p in view.parties],
            "nodes": sorted(t.nodes),
        }
        for t in view.trees
    ]


def model_facts(view: VerticalView) -> list[tuple[str, str, bool]]:
    """(label, text, is_code) rows of the model card."""
    finish = view.finish or {}
    params = as_dict(view.started, "params")
    other = _OTHER_MODELS_PARAMS.get(str(params.get("model", "secureboost")), frozenset())
    params = {k: v for k, v in params.items() if k not in other}
    rows = [
        ("mode", view.mode, False),
        ("parties (active)", f"{', '.join(view.parties)} ({view.started.get('active')})", False),
        ("parameters", ", ".join(f"{k} {v}" for k, v in sorted(params.items())) or "-", False),
        ("epochs recorded", str(len(view.epochs)), False)
        if view.logreg
        else ("trees recorded", str(len(view.trees)), False),
        (HALF_LABEL, str(finish.get("model_digest") or "-"), bool(finish.get("model_digest"))),
        ("status", f"{view.status}: {finish.get('reason') or '-'}", False),
    ]
    if view.started.get("model_run"):
        rows.insert(1, ("model of training run", str(view.started["model_run"]), True))
    return rows


def predictions(entries: Sequence[LineageEntry], run_id: str) -> list[dict[str, Any]]:
    """The prediction runs that used `run_id`'s model, in ledger order."""
    ids = [
        e.run_id
        for e in entries
        if e.kind == "vertical_started" and e.run_id and payload_of(e).get("model_run") == run_id
    ]
    rows = []
    for pred_id in ids:
        pred = vertical_view(entries, pred_id)
        sizes = {_int(p.get("size")) for p in pred.psi.values()}
        rows.append(
            {
                "run": pred_id,
                "status": pred.status,
                "rows": next(iter(sizes)) if len(sizes) == 1 else None,
                "reason": (pred.finish or {}).get("reason") or "",
            }
        )
    return rows


def render_vertical(
    entries: Sequence[LineageEntry],
    run: RunView,
    report: VerifyReport,
    keys: Mapping[str, str],
    anchors: AnchorCheck,
    verification: Mapping[str, Any] | None = None,
) -> str:
    """The report's HTML text for vertical run `run` (`flows.report.render_report` sends a
    vertical run here); `report` is the whole ledger's verification, `anchors` its check
    against the checkpoints, `verification` the silo copies' check (``copies``, a
    `SiloCopyCheck`) and the verify command to show without them (``verify_hint``)."""
    extra = dict(verification or {})
    copies = extra.setdefault("copies", SiloCopyCheck(True))
    extra.setdefault("verify_hint", "fedsilo lineage verify --silo-copy SILO_WORKSPACE")
    view = vertical_view(entries, run.run_id)
    splits = [{p: t.splits(p) for p in view.parties} for t in view.trees]
    context: dict[str, Any] = {
        "title": f"fedsilo vertical run {run.run_id}",
        "federation": view.started.get("federation") or "-",
        "status": view.status,
        "mode": view.mode,
        "generated": datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S UTC"),
        "n_entries": len(entries),
        "report": report,
        "anchors": anchors,
        "banner_ok": report.ok and anchors.ok and copies.ok,
        "artifacts_on_disk": True,
        **extra,
        "rehashed": "the model stays split across its parties (no model file to re-hash)",
        "checks": None,
        "vertical": True,
        "keys": sorted(keys.items()),
        "parties": parties(view),
        "party_names": view.parties,
        "psi": psi_summary(view),
        "failed": view.status == "failed",
        "failure": (view.finish or {}).get("reason") or "",
        "failed_party": view.failed_party,
        "trees": tree_rows(view),
        "splits_plot": None if view.logreg else vertical_splits_figure(splits, view.parties),
        "logreg": view.logreg,
        "epochs": view.epochs,
        "facts": model_facts(view),
        "predictions": predictions(entries, run.run_id),
        "timeline": sections.timeline(run, report.bad_seq),
    }
    return render("report_vertical.html.j2", **context)
