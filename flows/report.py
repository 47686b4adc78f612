"""`fedsilo report RUN --out DIR`: one self-contained HTML file a compliance reviewer can open.

The file opens from disk with no network: CSS is inline, plots are PNGs embedded as data URIs,
and the only URLs are plain links (the Prefect UI, silos' data docs). The HTML comes from the
Jinja2 templates in ``flows/templates/`` with autoescape on: every text from the ledger is
data written by silos and services, not trusted markup.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from flows import report_kinds
from flows import report_sections as sections
from flows.lineage_cmds import parse_keys
from flows.lineage_view import run_view
from flows.report_checks import (
    DEFAULT_REGRESSION_THRESHOLD,
    ModelCheck,
    anchor_check,
    data_docs,
    regression_checked,
    regressions,
    rehash_models,
)
from flows.report_html import render
from flows.report_plots import metrics_figure, privacy_figure
from flows.report_vertical import is_vertical, render_vertical
from schemas.ledger_checkpoint import AnchoredCheckpoint
from schemas.ledger_verify import ArtifactChecker, directory_artifact_checker, verify_chain
from schemas.lineage import LineageEntry


def report_filename(run_id: str) -> str:
    """File name of a run's report (run ids are sanitised for the file system)."""
    return f"fedsilo-report-{re.sub(r'[^A-Za-z0-9_.-]', '_', run_id)}.html"


def _verdict(chain_ok: bool, checks: list[ModelCheck] | None) -> tuple[bool, str]:
    """Whether the banner passes, and what re-hashing found, as one sentence."""
    if checks is None:
        return chain_ok, "not re-hashed"
    bad = [c for c in checks if c.status != "match"]
    if not checks:
        return chain_ok, "no model files recorded for this run"
    if not bad:
        return chain_ok, f"all {len(checks)} model files re-hashed and matching the ledger"
    named = ", ".join(f"v{c.version} {c.status.lower()}" for c in bad)
    return False, f"{len(bad)} of {len(checks)} model files do not match the ledger ({named})"


def render_report(
    entries: Sequence[LineageEntry],
    keys: Mapping[str, str],
    run_id: str,
    artifact_root: Path | None = None,
    prefect_ui_url: str | None = None,
    *,
    artifact_checker: ArtifactChecker | None = None,
    artifact_source: str | None = None,
    regression_threshold: float = DEFAULT_REGRESSION_THRESHOLD,
    data_docs_locations: Mapping[str, str] | None = None,
    checkpoints: Sequence[AnchoredCheckpoint] | None = None,
) -> str:
    """The report's HTML text (see `write_report`)."""
    view = run_view(entries, run_id)
    report = verify_chain(entries, parse_keys(keys))
    anchors = anchor_check(entries, keys, checkpoints)
    if is_vertical(view):  # parties, intersection and per-tree lineage instead of rounds
        return render_vertical(entries, view, report, keys, anchors)
    checker = artifact_checker
    source = artifact_source
    if checker is None and artifact_root is not None:
        checker = directory_artifact_checker(artifact_root)
        source = source or f"the files under {artifact_root}"
    checks = rehash_models(view.models, checker) if checker is not None else None
    ok, rehashed = _verdict(report.ok and anchors.ok, checks)
    prefect_runs, prefect_linked = sections.prefect_links(view, prefect_ui_url)
    silos = view.participants
    context: dict[str, Any] = {
        "title": f"fedsilo run {run_id}",
        "spec": view.spec,
        "status": view.status,
        "generated": datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S UTC"),
        "n_entries": len(entries),
        "report": report,
        "anchors": anchors,
        "banner_ok": ok,
        "rehashed": rehashed,
        "checks": checks,
        "artifact_source": source or "the model files",
        "keys": sorted(keys.items()),
        "vertical": False,
        "regressions": regressions(view.metrics, silos, regression_threshold),
        "threshold": regression_threshold,
        "regression_checked": regression_checked(sections.metric_names(view.metrics)),
        "participants": sections.participants(view),
        "data_docs": data_docs(view.validations, silos, data_docs_locations or {}),
        "validations": sections.validations(view),
        "metrics_plot": metrics_figure(view.metrics, silos, sections.metric_names(view.metrics)),
        "metric_rows": sections.metric_rows(view.metrics),
        "metric_names": sections.metric_names(view.metrics),
        "privacy": sections.privacy(view),
        "privacy_plot": privacy_figure(view.privacy),
        "facts": sections.model_facts(view),
        "final_metrics": sections.final_metrics(view),
        "aggregates": sections.aggregates(view),
        "events": sections.events(view),
        "declines": sections.declines(view),
        "personalization": sections.personalization(view),
        "ensemble": report_kinds.ensemble(view),
        "distill": report_kinds.distill(view),
        "prefect_runs": prefect_runs,
        "prefect_linked": prefect_linked,
        "timeline": sections.timeline(view, report.bad_seq),
    }
    return render("report.html.j2", **context)


def write_report(
    entries: Sequence[LineageEntry],
    keys: Mapping[str, str],
    run_id: str,
    out_dir: Path,
    artifact_root: Path | None = None,
    prefect_ui_url: str | None = None,
    **options: Any,
) -> Path:
    """Write the self-contained HTML report of one run.

    Parameters
    ----------
    entries
        The whole ledger (verification needs every entry), in stored order.
    keys
        Hex Ed25519 public keys, ``{"service": ..., "silo:<name>": ...}``.
    run_id
        The run to report on.
    out_dir
        Folder to write ``fedsilo-report-<run>.html`` into (created if missing).
    artifact_root
        The service workspace holding the model files, to re-hash them.
    prefect_ui_url
        Base address of the Prefect UI (e.g. ``http://127.0.0.1:4200``) for flow run links.
    **options
        Keyword options of `render_report`: ``artifact_checker`` (re-hash through another
        source, e.g. downloads from the service) with ``artifact_source`` (its description),
        ``regression_threshold``, ``data_docs_locations`` (silo -> folder or address),
        ``checkpoints`` (the export's or the service's, checked as `fedsilo lineage verify`
        does). Without `artifact_root` or ``artifact_checker`` the models are not re-hashed,
        and without ``checkpoints`` truncation is not checked; the report says so.

    Returns
    -------
    Path
        The HTML file.

    Raises
    ------
    LineageReviewError
        If the ledger has no entry for `run_id`, or a key is malformed.
    ValueError
        If a data docs location is neither an http(s) address nor an existing page or folder.
    """
    document = render_report(entries, keys, run_id, artifact_root, prefect_ui_url, **options)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / report_filename(run_id)
    path.write_text(document, encoding="utf-8")
    return path
