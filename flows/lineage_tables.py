"""The tables `fedsilo lineage show` and `lineage contributions` print: a run's timeline, its
ledger checkpoints and who countersigned them, and every model a silo's data went into."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from rich.table import Table
from rich.text import Text

from flows.exceptions import UnknownName
from flows.lineage_summary import summarize
from flows.lineage_view import SILO_PREFIX, RunView, payload_of, run_view, run_views, silo_name
from schemas.ledger_checkpoint import AnchoredCheckpoint
from schemas.lineage import LineageEntry


def _when(created_at: str) -> str:
    return created_at.replace("T", " ")[:19]


def show_run(entries: Sequence[LineageEntry], run_id: str) -> Table:
    """`fedsilo lineage show RUN`: the run's timeline, one entry per row.

    Raises
    ------
    LineageReviewError
        If the ledger has no entry for `run_id`.
    """
    view = run_view(entries, run_id)
    table = Table(
        "seq",
        "time (UTC)",
        "kind",
        "author",
        "what",
        title=Text(f"run {run_id}: {view.status}, silos {', '.join(view.participants) or '-'}"),
    )
    for entry in view.entries:
        style = "red" if entry.kind in ("run_failed", "update_rejected", "silo_refused") else None
        # Text, not str: ledger content must never be read as rich markup ("[...]").
        table.add_row(
            str(entry.seq),
            Text(_when(entry.created_at)),
            Text(entry.kind),
            Text(entry.author),
            Text(summarize(entry)),
            style=style,
        )
    return table


def checkpoints_table(checkpoints: Sequence[AnchoredCheckpoint], run_id: str) -> Table:
    """`fedsilo lineage show RUN`: the run's ledger checkpoints and who countersigned them."""
    table = Table(
        "height",
        "time (UTC)",
        "event",
        "round",
        "head",
        "countersigned by",
        title=Text(f"ledger checkpoints of run {run_id}"),
    )
    for anchored in checkpoints:
        cp = anchored.checkpoint
        if cp.run_id != run_id:
            continue
        silos = sorted({c.silo for c in anchored.countersignatures})
        table.add_row(
            str(cp.height),
            Text(_when(cp.created_at)),
            Text(cp.event),
            "-" if cp.round is None else str(cp.round),
            Text(cp.head_hash[:16] + "…"),
            Text(", ".join(silos) or "nobody yet"),
            style=None if silos else "yellow",
        )
    return table


@dataclass(frozen=True)
class Contribution:
    """A model that a silo's accepted updates went into."""

    run_id: str
    model_version: int
    round: int
    sha256: str
    path: str
    via_rounds: tuple[int, ...]


def _contributing_rounds(view: RunView, name: str) -> set[int]:
    """Rounds whose aggregate included the silo's update.

    The aggregate's contributor list is authoritative: an update accepted but then left out
    (its silo dropped before unmasking) did not reach the model. A round with no aggregate
    entry falls back to the accepted updates.
    """
    aggregated = {a.get("round") for a in view.aggregates}
    unaggregated = {
        u["round"]
        for u in view.accepted
        if u.get("silo") == name
        and isinstance(u.get("round"), int)
        and u["round"] not in aggregated
    }
    return view.aggregated_rounds(name) | unaggregated


def contributions(entries: Sequence[LineageEntry], silo: str) -> list[Contribution]:
    """`fedsilo lineage contributions SILO`: every model the silo's data went into.

    An update in round r of run R contributed to model version r of R and, through it, to
    every later version of R (each round starts from the previous global model).

    Parameters
    ----------
    silo
        ``hungary`` or ``silo:hungary``.

    Returns
    -------
    list[Contribution]
        In ledger order: run by run, version by version.
    """
    name = silo_name(silo)
    rows: list[Contribution] = []
    for run_id, view in run_views(entries).items():
        rounds = _contributing_rounds(view, name)
        if not rounds:
            continue
        first = min(rounds)
        for model in view.models:
            if model.version >= first:
                via = tuple(sorted(r for r in rounds if r <= model.version))
                rows.append(
                    Contribution(run_id, model.version, model.round, model.sha256, model.path, via)
                )
    return rows


def contributions_table(rows: Sequence[Contribution], silo: str) -> Table:
    """Rich table of `contributions` output for the CLI."""
    name = silo_name(silo)
    table = Table(
        title=Text(f"models that {SILO_PREFIX}{name}'s data contributed to ({len(rows)})")
    )
    table.add_column("run", no_wrap=True, min_width=32)  # whole: it is the next command's input
    table.add_column("model")
    table.add_column("saved in round")
    table.add_column("sha256", overflow="fold")
    table.add_column("path", overflow="fold")
    table.add_column(f"rounds with {name}'s updates")
    for row in rows:
        table.add_row(
            Text(row.run_id),
            f"v{row.model_version}",
            str(row.round),
            Text(row.sha256),
            Text(row.path),
            ", ".join(map(str, row.via_rounds)),
        )
    return table


def known_silos(entries: Sequence[LineageEntry]) -> list[str]:
    """Every silo the ledger mentions: as an author or as a payload's ``silo``."""
    names = {silo_name(e.author) for e in entries if e.author.startswith(SILO_PREFIX)}
    names |= {p["silo"] for e in entries if isinstance((p := payload_of(e)).get("silo"), str)}
    return sorted(names)


def require_silo(entries: Sequence[LineageEntry], silo: str) -> str:
    """The silo's bare name, if the ledger knows it.

    Raises
    ------
    UnknownName
        Naming the silo and listing the ones the ledger knows.
    """
    name = silo_name(silo)
    known = known_silos(entries)
    if name not in known:
        raise UnknownName(
            f"no silo {name!r} in the ledger; known silos: {', '.join(known) or 'none'}"
        )
    return name


def run_ids(entries: Sequence[LineageEntry]) -> list[str]:
    """The ledger's run ids, in order of first appearance."""
    return list(dict.fromkeys(e.run_id for e in entries if e.run_id))


def show_run_json(
    entries: Sequence[LineageEntry], checkpoints: Sequence[AnchoredCheckpoint], run_id: str
) -> dict[str, Any]:
    """`fedsilo lineage show RUN --json`: the timeline and checkpoints as plain data."""
    view = run_view(entries, run_id)
    return {
        "run_id": run_id,
        "status": view.status,
        "participants": list(view.participants),
        "entries": [
            {
                "seq": e.seq,
                "created_at": e.created_at,
                "kind": e.kind,
                "author": e.author,
                "summary": summarize(e),
                "entry_hash": e.entry_hash,
            }
            for e in view.entries
        ],
        "checkpoints": [
            {
                "height": a.checkpoint.height,
                "created_at": a.checkpoint.created_at,
                "event": a.checkpoint.event,
                "round": a.checkpoint.round,
                "head_hash": a.checkpoint.head_hash,
                "countersigned_by": sorted({c.silo for c in a.countersignatures}),
            }
            for a in checkpoints
            if a.checkpoint.run_id == run_id
        ],
    }
