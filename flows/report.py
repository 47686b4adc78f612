"""`fedsilo report RUN --out DIR`: one self-contained HTML file a compliance reviewer can open.

The file opens from disk with no network: CSS is inline, plots are PNGs embedded as data URIs,
and the only URLs are plain links (the Prefect UI, silos' data docs). The HTML comes from the
Jinja2 templates in ``flows/templates/`` with autoescape on: every text from the ledger is
data written by silos and services, not trusted markup.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
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
    SiloCopyCheck,
    anchor_check,
    data_docs,
    regression_checked,
    regressions,
    rehash_models,
    silo_copy_check,
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


DISK_UNCHECKED = (
    "the model files on disk at the paths the ledger names were NOT checked (give --artifacts "
    "SERVICE_WORKSPACE, the service workspace holding models/, to re-hash them)"
)


def _verdict(
    chain_ok: bool, checks: list[ModelCheck] | None, on_disk: bool = True
) -> tuple[bool, str]:
    """Whether the banner passes, and what re-hashing found, as one sentence that says what
    was hashed: the files at the ledger's paths (`on_disk`), or the service's stored copies
    (downloaded), in which case the files on disk were not checked."""
    if checks is None:
        return chain_ok, "not re-hashed"
    bad = [c for c in checks if c.status != "match"]
    if not checks:
        return chain_ok, "no model files recorded for this run"
    what = "model files" if on_disk else "of the service's stored copies of model versions"
    if not bad:
        if on_disk:
            return chain_ok, f"all {len(checks)} model files re-hashed and matching the ledger"
        return chain_ok, (
            f"the service's stored copies of {len(checks)} model files re-hashed and "
            f"matching the ledger; {DISK_UNCHECKED}"
        )
    named = ", ".join(f"v{c.version} {c.status.lower()}" for c in bad)
    return False, f"{len(bad)} of {len(checks)} {what} do not match the ledger ({named})"


def verify_command(
    *,
    export: Path | None = None,
    service_urls: Sequence[str] = (),
    token_file: Path | None = None,
    artifacts: Path | None = None,
) -> str:
    """The `fedsilo lineage verify` command that also checks what this report cannot without
    the silos' copies: a cut of the newest entries by whoever holds the ledger."""
    parts = ["fedsilo lineage verify"]
    if export is not None:
        parts.append(f"--export {shlex.quote(str(export))}")
    else:
        parts += [f"--service-url {shlex.quote(url)}" for url in service_urls]
        token = shlex.quote(str(token_file)) if token_file else "TOKEN_FILE"
        parts.append(f"--token-file {token}")
    if artifacts is not None:
        parts.append(f"--artifacts {shlex.quote(str(artifacts))}")
    parts.append("--silo-copy SILO_WORKSPACE (once per silo)")
    return " ".join(parts)


@dataclass(frozen=True)
class Verdict:
    """What the report's banner concluded: ok (exit 0) or not (exit 1), and why in words."""

    ok: bool
    said: str


def render_report(
    entries: Sequence[LineageEntry],
    keys: Mapping[str, str],
    run_id: str,
    artifact_root: Path | None = None,
    prefect_ui_url: str | None = None,
    **options: Any,
) -> str:
    """The report's HTML text (see `write_report`)."""
    return build_report(entries, keys, run_id, artifact_root, prefect_ui_url, **options)[0]


def build_report(
    entries: Sequence[LineageEntry],
    keys: Mapping[str, str],
    run_id: str,
    artifact_root: Path | None = None,
    prefect_ui_url: str | None = None,
    *,
    artifact_checker: ArtifactChecker | None = None,
    artifact_source: str | None = None,
    artifacts_on_disk: bool = False,
    regression_threshold: float = DEFAULT_REGRESSION_THRESHOLD,
    data_docs_locations: Mapping[str, str] | None = None,
    checkpoints: Sequence[AnchoredCheckpoint] | None = None,
    silo_copies: Sequence[Path] = (),
    verify_hint: str | None = None,
) -> tuple[str, Verdict]:
    """The report's HTML text and its banner's verdict (see `write_report`)."""
    view = run_view(entries, run_id)
    report = verify_chain(entries, parse_keys(keys))
    copies, silo_checkpoints = silo_copy_check(silo_copies, entries, keys)
    anchors = anchor_check(entries, keys, checkpoints, silo_checkpoints)
    verification = {
        "copies": copies,
        "verify_hint": verify_hint or verify_command(artifacts=artifact_root),
    }
    if is_vertical(view):  # parties, intersection and per-tree lineage instead of rounds
        ok = report.ok and anchors.ok and copies.ok
        html = render_vertical(entries, view, report, keys, anchors, verification)
        return html, Verdict(ok, _said(report, anchors, copies, "" if ok else "failed"))
    checker = artifact_checker
    source = artifact_source
    on_disk = artifacts_on_disk or artifact_root is not None
    if checker is None and artifact_root is not None:
        checker = directory_artifact_checker(artifact_root)
        source = source or f"the files under {artifact_root}"
    checks = rehash_models(view.models, checker) if checker is not None else None
    ok, rehashed = _verdict(report.ok and anchors.ok and copies.ok, checks, on_disk)
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
        "artifacts_on_disk": on_disk,
        **verification,
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
        "asynchronous": sections.is_asynchronous(view),
        "contract_file_sha256": view.started.get("contract_sha256"),
    }
    return render("report.html.j2", **context), Verdict(
        ok, _said(report, anchors, copies, rehashed)
    )


def _said(report: Any, anchors: Any, copies: SiloCopyCheck, rehashed: str) -> str:
    """The banner's conclusion as one line for the terminal."""
    if not report.ok:
        return f"ledger NOT verified: first bad entry {report.bad_seq}: {report.reason}"
    if not anchors.ok:
        return f"ledger NOT verified: {anchors.said}"
    if not copies.ok:
        return "ledger NOT verified: the silos' copies disagree with the ledger"
    return f"model check failed: {rehashed}"


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
        does), ``silo_copies`` (silos' workspaces, cross-checked as `fedsilo lineage verify
        --silo-copy` does: without them a cut by the ledger's holder cannot be detected, and
        the banner says so with ``verify_hint``, the command to run), ``artifacts_on_disk``
        (the checker reads the files at the ledger's paths, not the service's copies).
        Without `artifact_root` or ``artifact_checker`` the models are not re-hashed, and
        without ``checkpoints`` truncation is not checked; the report says so.

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
    return write_report_verdict(
        entries, keys, run_id, out_dir, artifact_root, prefect_ui_url, **options
    )[0]


def write_report_verdict(
    entries: Sequence[LineageEntry],
    keys: Mapping[str, str],
    run_id: str,
    out_dir: Path,
    artifact_root: Path | None = None,
    prefect_ui_url: str | None = None,
    **options: Any,
) -> tuple[Path, Verdict]:
    """`write_report`, also returning the banner's verdict (`fedsilo report` exits 1 when it
    is a failure, as `fedsilo lineage verify` does)."""
    document, verdict = build_report(
        entries, keys, run_id, artifact_root, prefect_ui_url, **options
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / report_filename(run_id)
    path.write_text(document, encoding="utf-8")
    return path, verdict
