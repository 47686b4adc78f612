"""`fedsilo report RUN --out DIR`: one self-contained HTML file a compliance reviewer can open.

The file opens from disk with no network: CSS is inline, plots are PNGs embedded as data URIs,
and the only URLs are plain links to the Prefect UI. Every text that comes from the ledger is
escaped, since a payload is data written by silos and services, not trusted markup.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

from pydantic import ValidationError

from flows.lineage_cmds import parse_keys
from flows.lineage_summary import summarize
from flows.lineage_view import RoundMetrics, RunView, as_dict, as_list, run_view
from flows.report_html import CSS, digest, esc, fmt, table, verdict
from flows.report_plots import metrics_figure, privacy_figure
from schemas.ledger_verify import VerifyReport, directory_artifact_checker, verify_chain
from schemas.lineage import LineageEntry
from schemas.specs import ModelSpec, param_shapes

# ----------------------------------------------------------------------------- sections


def _verification(report: VerifyReport, artifacts_checked: bool, keys: Mapping[str, str]) -> str:
    head = f"head seq {esc(report.head_seq)}, hash <code>{esc(report.head_hash)}</code>"
    if report.ok:
        banner = f'<div class="banner pass">Ledger verified: {esc(report)}</div>'
        scope = f"all {esc(report.checked)} entries of the ledger verified ({head})"
    else:
        banner = (
            f'<div class="banner fail">Ledger NOT verified: first bad entry '
            f"{esc(report.bad_seq)}: {esc(report.reason)}</div>"
        )
        scope = f"entries before the first bad one verified ({head})"
    artifacts = (
        "Model artifacts were re-hashed against the ledger."
        if artifacts_checked
        else "Model artifacts were NOT re-hashed (no service workspace given)."
    )
    rows = [(esc(owner), f"<code>{esc(key)}</code>") for owner, key in sorted(keys.items())]
    return (
        '<h2 id="verification">Verification of the ledger</h2>'
        f"{banner}<p>Hash chain and every service and silo signature re-checked over the whole "
        f"ledger: {scope}. {artifacts}</p>"
        '<p class="muted">Re-check at any time with <code>fedsilo lineage verify</code>. '
        "Public keys used:</p>" + table(("signer", "Ed25519 public key"), rows)
    )


def _participants(view: RunView) -> str:
    rows = []
    for silo in view.participants:
        joined = view.joined.get(silo)
        refusals = [str(r.get("reason")) for r in view.refused if r.get("silo") == silo]
        rows.append(
            (
                esc(silo),
                esc(f"seq {joined.seq}, {joined.created_at}") if joined else "-",
                esc("; ".join(refusals)) or "-",
                esc(sum(1 for v in view.validations if v.silo == silo)),
                esc(sum(1 for u in view.accepted if u.get("silo") == silo)),
            )
        )
    headers = ("silo", "joined", "refused", "validations", "updates accepted")
    return '<h2 id="participants">Participants</h2>' + table(headers, rows)


def _validations(view: RunView) -> str:
    rows = []
    for v in sorted(view.validations, key=lambda v: (v.round, v.silo)):
        failed = "; ".join(
            f"{f.get('expectation')} on {f.get('column')}: {f.get('unexpected_count')} rows "
            f"({f.get('unexpected_percent')}%)"
            for f in v.failed
        )
        rows.append(
            (
                esc(v.round),
                esc(v.silo),
                esc(f"{v.contract} v{v.contract_version}"),
                digest(v.contract_sha256),
                digest(v.data_sha256),
                fmt(v.n_rows),
                verdict(v.success),
                esc(failed) or "-",
            )
        )
    headers = ("round", "silo", "contract", "contract sha256", "data sha256", "rows", "result")
    return (
        '<h2 id="data">Data fingerprints and validation</h2><p>Each silo fingerprints its data '
        "and validates it against the data contract at the start of every round; only the "
        "summary below leaves the silo.</p>" + table((*headers, "failed expectations"), rows)
    )


def _metric_rows(metrics: Sequence[RoundMetrics]) -> list[tuple[str, ...]]:
    rows: list[tuple[str, ...]] = []
    for m in metrics:
        for who, values in [("weighted", m.weighted), *sorted(m.per_silo.items())]:
            values = values if isinstance(values, dict) else {}
            rows.append(
                (
                    esc(m.round),
                    esc(f"v{m.model_version}"),
                    f"<b>{esc(who)}</b>" if who == "weighted" else esc(who),
                    fmt(values.get("n_test")),
                    fmt(values.get("accuracy")),
                    fmt(values.get("auc")),
                    fmt(values.get("loss")),
                )
            )
    return rows


def _metrics(view: RunView) -> str:
    uri = metrics_figure(view.metrics, view.participants)
    plot = f'<img alt="metrics per round" src="{uri}">' if uri else "<p>No metrics recorded.</p>"
    headers = ("round", "model evaluated", "silo", "n_test", "accuracy", "AUC", "loss")
    return (
        '<h2 id="metrics">Metrics per round</h2><p>Each round the silos evaluate a global model '
        "on their local holdout; the black line is the mean weighted by holdout size.</p>"
        f"{plot}" + table(headers, _metric_rows(view.metrics))
    )


def _privacy(view: RunView) -> str:
    if not view.privacy:
        return '<h2 id="privacy">Privacy budget</h2><p>No privacy spending recorded.</p>'
    uri = privacy_figure(view.privacy)
    rows = [
        (
            esc(p.silo),
            esc(p.round),
            fmt(p.epsilon),
            fmt(p.delta),
            fmt(p.noise_multiplier),
            fmt(p.clip_norm),
        )
        for p in sorted(view.privacy, key=lambda p: (p.silo, p.round))
    ]
    headers = ("silo", "round", "epsilon", "delta", "noise multiplier", "clip norm")
    return (
        '<h2 id="privacy">Privacy budget per silo</h2>'
        f'<img alt="privacy spent per silo" src="{uri}">' + table(headers, rows)
    )


def _parameter_count(spec: dict[str, Any]) -> str:
    try:
        model = ModelSpec.model_validate(spec.get("model"))
    except ValidationError:
        return "unknown (model spec not recognised)"
    total = 0
    for _, shape in param_shapes(model):
        size = 1
        for dim in shape:
            size *= dim
        total += size
    return f"{total:,}"


def _final_metrics(view: RunView) -> RoundMetrics | None:
    final = view.final_model
    matching = [m for m in view.metrics if final and m.model_version == final.version]
    chosen = matching or view.metrics
    return chosen[-1] if chosen else None


def _model_card(view: RunView) -> str:
    spec, start, final = view.spec, view.started, view.final_model
    model = as_dict(spec, "model")
    facts = [
        ("model kind", esc(model.get("kind", "-"))),
        ("features / hidden layers", esc(f"{model.get('n_features')} / {model.get('hidden')}")),
        ("parameters", esc(_parameter_count(spec))),
        ("strategy", esc(json.dumps(spec.get("strategy"), sort_keys=True))),
        ("local training", esc(json.dumps(spec.get("training"), sort_keys=True))),
        ("rounds / min silos", esc(f"{spec.get('rounds')} / {spec.get('min_silos')}")),
        ("final model", esc(f"v{final.version} at {final.path}") if final else "-"),
        ("final model sha256", f"<code>{esc(final.sha256)}</code>" if final else "-"),
        ("config sha256", f"<code>{esc(start.get('config_sha256'))}</code>"),
        (
            "fedsilo / git commit",
            esc(f"{start.get('fedsilo_version')} / {start.get('git_commit')}"),
        ),
        ("initial model sha256", f"<code>{esc(start.get('initial_model_sha256'))}</code>"),
        ("status", esc(f"{view.status}: {(view.finish or {}).get('reason') or '-'}")),
    ]
    card = table(None, facts)
    scored = _final_metrics(view)
    metrics = (
        f"<h3>Metrics of model v{esc(scored.model_version)} per silo</h3>"
        + table(
            ("round", "model evaluated", "silo", "n_test", "accuracy", "AUC", "loss"),
            _metric_rows([scored]),
        )
        if scored
        else "<p>No metrics recorded.</p>"
    )
    full = esc(json.dumps(spec, indent=2, sort_keys=True))
    return (
        '<h2 id="model-card">Model card</h2>'
        + card
        + metrics
        + f"<details><summary>Full run configuration</summary><pre>{full}</pre></details>"
    )


def _names(value: Any) -> str:
    return ", ".join(map(str, value)) if isinstance(value, list) else str(value)


def _rounds(view: RunView) -> str:
    rows = []
    for a in view.aggregates:
        contributors = as_list(a, "contributors")
        who = ", ".join(
            f"{c.get('silo')} ({c.get('n_examples')})" for c in contributors if isinstance(c, dict)
        )
        rows.append(
            (
                esc(a.get("round")),
                esc(who) or "-",
                digest(a.get("aggregate_digest")),
                esc(f"v{a.get('model_version')}"),
                verdict(a.get("secure_aggregation") is True, "yes", "no"),
            )
        )
    events = [
        esc(
            f"round {r.get('round')}: {r.get('silo')} update rejected, HTTP {r.get('status')}: "
            f"{r.get('reason')}"
        )
        for r in view.rejected
    ] + [esc(f"round {d.get('round')}: dropped {_names(d.get('silos'))}") for d in view.dropouts]
    events += [
        esc(f"round {r.get('round')}: masks recovered from {_names(r.get('survivors'))}")
        for r in view.recoveries
    ]
    listed = "".join(f"<li>{x}</li>" for x in events) or "<li>none</li>"
    headers = ("round", "contributors (examples)", "aggregate digest", "model", "secure agg.")
    return (
        '<h2 id="rounds">Aggregation per round</h2>'
        + table(headers, rows)
        + f"<h3>Rejections, dropouts, recoveries</h3><ul>{listed}</ul>"
    )


def _prefect_links(view: RunView, prefect_ui_url: str | None) -> str:
    runs = view.prefect_flow_runs()
    if not runs:
        return '<h2 id="prefect">Prefect flow runs</h2><p>No Prefect flow run recorded.</p>'
    base = (prefect_ui_url or "").rstrip("/")
    if base and urlsplit(base).scheme not in ("http", "https"):
        base = ""  # only plain web links: never javascript: or other schemes from a setting
    items = []
    for who, run in runs:
        target = f"{base}/runs/flow-run/{quote(run, safe='')}"
        link = f'<a href="{esc(target)}">{esc(run)}</a>' if base else f"<code>{esc(run)}</code>"
        items.append(f"<li>{esc(who)}: {link}</li>")
    hint = "" if base else '<p class="muted">Pass the Prefect UI address to get links.</p>'
    return f'<h2 id="prefect">Prefect flow runs</h2><ul>{"".join(items)}</ul>{hint}'


def _timeline(view: RunView, report: VerifyReport) -> str:
    rows = [
        (
            esc(e.seq),
            f'<span title="{esc(e.created_at)}">{esc(e.created_at.replace("T", " ")[:19])}</span>',
            esc(e.kind),
            esc(e.author),
            esc(summarize(e)),
            verdict(False, no="BAD") if e.seq == report.bad_seq else "",
        )
        for e in view.entries
    ]
    headers = ("seq", "time (UTC)", "kind", "author", "what", "")
    return '<h2 id="timeline">Ledger entries of this run</h2>' + table(headers, rows)


# ----------------------------------------------------------------------------- document


def report_filename(run_id: str) -> str:
    """File name of a run's report (run ids are sanitised for the file system)."""
    return f"fedsilo-report-{re.sub(r'[^A-Za-z0-9_.-]', '_', run_id)}.html"


def render_report(
    entries: Sequence[LineageEntry],
    keys: Mapping[str, str],
    run_id: str,
    artifact_root: Path | None = None,
    prefect_ui_url: str | None = None,
) -> str:
    """The report's HTML text (see `write_report`)."""
    view = run_view(entries, run_id)
    checker = directory_artifact_checker(artifact_root) if artifact_root is not None else None
    report = verify_chain(entries, parse_keys(keys), checker)
    spec = view.spec
    title = f"fedsilo run {run_id}"
    generated = datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    sections = [
        _verification(report, checker is not None, keys),
        _participants(view),
        _validations(view),
        _metrics(view),
        _privacy(view),
        _model_card(view),
        _rounds(view),
        _prefect_links(view, prefect_ui_url),
        _timeline(view, report),
    ]
    return (
        f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{esc(title)}</title>'
        f"<style>{CSS}</style></head><body><h1>{esc(title)}</h1>"
        f'<p class="muted">Federation {esc(spec.get("federation", "-"))}, dataset '
        f"{esc(spec.get('dataset', '-'))}, status {esc(view.status)}. Generated {generated} "
        f"from {len(entries)} ledger entries.</p>" + "".join(sections) + "</body></html>"
    )


def write_report(
    entries: Sequence[LineageEntry],
    keys: Mapping[str, str],
    run_id: str,
    out_dir: Path,
    artifact_root: Path | None = None,
    prefect_ui_url: str | None = None,
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
        The service workspace holding the model files, to re-hash them; None skips that.
    prefect_ui_url
        Base address of the Prefect UI (e.g. ``http://127.0.0.1:4200``) for flow run links.

    Returns
    -------
    Path
        The HTML file.

    Raises
    ------
    LineageReviewError
        If the ledger has no entry for `run_id`, or a key is malformed.
    """
    document = render_report(entries, keys, run_id, artifact_root, prefect_ui_url)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / report_filename(run_id)
    path.write_text(document, encoding="utf-8")
    return path
