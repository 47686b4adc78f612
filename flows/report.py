"""`fedsilo report RUN --out DIR`: one self-contained HTML file a compliance reviewer can open.

The file opens from disk with no network: CSS is inline, plots are PNGs embedded as data URIs,
and the only URLs are plain links to the Prefect UI. Every text that comes from the ledger is
escaped, since a payload is data written by silos and services, not trusted markup.
"""

from __future__ import annotations

import html
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

from pydantic import ValidationError

from aggregation.ledger_verify import VerifyReport, directory_artifact_checker, verify_chain
from flows.lineage_cmds import parse_keys
from flows.lineage_view import RoundMetrics, RunView, as_dict, as_list, run_view, summarize
from flows.report_plots import metrics_figure, privacy_figure
from schemas.lineage import LineageEntry
from schemas.specs import ModelSpec, param_shapes

_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;margin:2rem auto;max-width:1200px;
color:#1d232a;padding:0 1rem;line-height:1.4}
h1{margin-bottom:.2rem}h2{border-bottom:2px solid #d0d7de;padding-bottom:.2rem;margin-top:2rem}
table{border-collapse:collapse;margin:.6rem 0;font-size:.9rem}
th,td{border:1px solid #d0d7de;padding:.25rem .5rem;text-align:left;vertical-align:top}
th{background:#f3f5f7}code,pre{font-family:ui-monospace,monospace;font-size:.85rem}
pre{background:#f6f8fa;padding:.6rem;overflow-x:auto}
.pass{color:#116329;font-weight:600}.fail{color:#b42318;font-weight:600}
.banner{padding:.7rem 1rem;border-radius:6px;margin:1rem 0;font-weight:600}
.banner.pass{background:#dafbe1;border:1px solid #4ac26b}
.banner.fail{background:#ffebe9;border:1px solid #ff8182}
.muted{color:#57606a}img{max-width:100%;border:1px solid #d0d7de}
"""


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _table(headers: Sequence[str] | None, rows: Iterable[Sequence[str]]) -> str:
    """An HTML table; cells are already-escaped HTML. Without headers the first column is one."""
    head = ""
    if headers is not None:
        head = "<thead><tr>" + "".join(f"<th>{_e(h)}</th>" for h in headers) + "</tr></thead>"
        body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    else:
        body = "".join(
            f"<tr><th>{row[0]}</th>" + "".join(f"<td>{c}</td>" for c in row[1:]) + "</tr>"
            for row in rows
        )
    return f"<table>{head}<tbody>{body}</tbody></table>"


def _digest(value: Any) -> str:
    """A sha256 shortened for reading, the full value in the tooltip and copyable text."""
    text = str(value or "")
    if not text:
        return "-"
    return f'<code title="{_e(text)}">{_e(text[:16])}&hellip;</code>'


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        # Small values (a delta of 1e-5) keep their significant digits.
        return f"{value:.4f}" if value == 0 or abs(value) >= 0.01 else f"{value:.3g}"
    return "-" if value is None else _e(value)


def _verdict(ok: bool, yes: str = "PASS", no: str = "FAIL") -> str:
    return f'<span class="pass">{yes}</span>' if ok else f'<span class="fail">{no}</span>'


# ----------------------------------------------------------------------------- sections


def _verification(report: VerifyReport, artifacts_checked: bool, keys: Mapping[str, str]) -> str:
    if report.ok:
        banner = f'<div class="banner pass">Ledger verified: {_e(report)}</div>'
    else:
        banner = (
            f'<div class="banner fail">Ledger NOT verified: first bad entry '
            f"{_e(report.bad_seq)}: {_e(report.reason)}</div>"
        )
    artifacts = (
        "Model artifacts were re-hashed against the ledger."
        if artifacts_checked
        else "Model artifacts were NOT re-hashed (no service workspace given)."
    )
    rows = [(_e(owner), f"<code>{_e(key)}</code>") for owner, key in sorted(keys.items())]
    return (
        '<h2 id="verification">Verification of the ledger</h2>'
        f"{banner}<p>Chain, every service and silo signature checked over the whole ledger "
        f"({_e(report.checked)} entries checked, head seq {_e(report.head_seq)}, head hash "
        f"<code>{_e(report.head_hash)}</code>). {artifacts}</p>"
        '<p class="muted">Re-check at any time with <code>fedsilo lineage verify</code>. '
        "Public keys used:</p>" + _table(("signer", "Ed25519 public key"), rows)
    )


def _participants(view: RunView) -> str:
    rows = []
    for silo in view.participants:
        joined = view.joined.get(silo)
        refusals = [str(r.get("reason")) for r in view.refused if r.get("silo") == silo]
        rows.append(
            (
                _e(silo),
                _e(f"seq {joined.seq}, {joined.created_at}") if joined else "-",
                _e("; ".join(refusals)) or "-",
                _e(sum(1 for v in view.validations if v.silo == silo)),
                _e(sum(1 for u in view.accepted if u.get("silo") == silo)),
            )
        )
    headers = ("silo", "joined", "refused", "validations", "updates accepted")
    return '<h2 id="participants">Participants</h2>' + _table(headers, rows)


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
                _e(v.round),
                _e(v.silo),
                _e(f"{v.contract} v{v.contract_version}"),
                _digest(v.contract_sha256),
                _digest(v.data_sha256),
                _fmt(v.n_rows),
                _verdict(v.success),
                _e(failed) or "-",
            )
        )
    headers = ("round", "silo", "contract", "contract sha256", "data sha256", "rows", "result")
    return (
        '<h2 id="data">Data fingerprints and validation</h2><p>Each silo fingerprints its data '
        "and validates it against the data contract at the start of every round; only the "
        "summary below leaves the silo.</p>" + _table((*headers, "failed expectations"), rows)
    )


def _metric_rows(metrics: Sequence[RoundMetrics]) -> list[tuple[str, ...]]:
    rows: list[tuple[str, ...]] = []
    for m in metrics:
        for who, values in [("weighted", m.weighted), *sorted(m.per_silo.items())]:
            values = values if isinstance(values, dict) else {}
            rows.append(
                (
                    _e(m.round),
                    _e(f"v{m.model_version}"),
                    f"<b>{_e(who)}</b>" if who == "weighted" else _e(who),
                    _fmt(values.get("n_test")),
                    _fmt(values.get("accuracy")),
                    _fmt(values.get("auc")),
                    _fmt(values.get("loss")),
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
        f"{plot}" + _table(headers, _metric_rows(view.metrics))
    )


def _privacy(view: RunView) -> str:
    if not view.privacy:
        return '<h2 id="privacy">Privacy budget</h2><p>No privacy spending recorded.</p>'
    uri = privacy_figure(view.privacy)
    rows = [
        (
            _e(p.silo),
            _e(p.round),
            _fmt(p.epsilon),
            _fmt(p.delta),
            _fmt(p.noise_multiplier),
            _fmt(p.clip_norm),
        )
        for p in sorted(view.privacy, key=lambda p: (p.silo, p.round))
    ]
    headers = ("silo", "round", "epsilon", "delta", "noise multiplier", "clip norm")
    return (
        '<h2 id="privacy">Privacy budget per silo</h2>'
        f'<img alt="privacy spent per silo" src="{uri}">' + _table(headers, rows)
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
        ("model kind", _e(model.get("kind", "-"))),
        ("features / hidden layers", _e(f"{model.get('n_features')} / {model.get('hidden')}")),
        ("parameters", _e(_parameter_count(spec))),
        ("strategy", _e(json.dumps(spec.get("strategy"), sort_keys=True))),
        ("local training", _e(json.dumps(spec.get("training"), sort_keys=True))),
        ("rounds / min silos", _e(f"{spec.get('rounds')} / {spec.get('min_silos')}")),
        ("final model", _e(f"v{final.version} at {final.path}") if final else "-"),
        ("final model sha256", f"<code>{_e(final.sha256)}</code>" if final else "-"),
        ("config sha256", f"<code>{_e(start.get('config_sha256'))}</code>"),
        ("fedsilo / git commit", _e(f"{start.get('fedsilo_version')} / {start.get('git_commit')}")),
        ("initial model sha256", f"<code>{_e(start.get('initial_model_sha256'))}</code>"),
        ("status", _e(f"{view.status}: {(view.finish or {}).get('reason') or '-'}")),
    ]
    card = _table(None, facts)
    scored = _final_metrics(view)
    metrics = (
        f"<h3>Metrics of model v{_e(scored.model_version)} per silo</h3>"
        + _table(
            ("round", "model evaluated", "silo", "n_test", "accuracy", "AUC", "loss"),
            _metric_rows([scored]),
        )
        if scored
        else "<p>No metrics recorded.</p>"
    )
    full = _e(json.dumps(spec, indent=2, sort_keys=True))
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
                _e(a.get("round")),
                _e(who) or "-",
                _digest(a.get("aggregate_digest")),
                _e(f"v{a.get('model_version')}"),
                _verdict(a.get("secure_aggregation") is True, "yes", "no"),
            )
        )
    events = [
        _e(
            f"round {r.get('round')}: {r.get('silo')} update rejected, HTTP {r.get('status')}: "
            f"{r.get('reason')}"
        )
        for r in view.rejected
    ] + [_e(f"round {d.get('round')}: dropped {_names(d.get('silos'))}") for d in view.dropouts]
    events += [
        _e(f"round {r.get('round')}: masks recovered from {_names(r.get('survivors'))}")
        for r in view.recoveries
    ]
    listed = "".join(f"<li>{x}</li>" for x in events) or "<li>none</li>"
    headers = ("round", "contributors (examples)", "aggregate digest", "model", "secure agg.")
    return (
        '<h2 id="rounds">Aggregation per round</h2>'
        + _table(headers, rows)
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
        link = f'<a href="{_e(target)}">{_e(run)}</a>' if base else f"<code>{_e(run)}</code>"
        items.append(f"<li>{_e(who)}: {link}</li>")
    hint = "" if base else '<p class="muted">Pass the Prefect UI address to get links.</p>'
    return f'<h2 id="prefect">Prefect flow runs</h2><ul>{"".join(items)}</ul>{hint}'


def _timeline(view: RunView, report: VerifyReport) -> str:
    rows = [
        (
            _e(e.seq),
            f'<span title="{_e(e.created_at)}">{_e(e.created_at.replace("T", " ")[:19])}</span>',
            _e(e.kind),
            _e(e.author),
            _e(summarize(e)),
            _verdict(False, no="BAD") if e.seq == report.bad_seq else "",
        )
        for e in view.entries
    ]
    headers = ("seq", "time (UTC)", "kind", "author", "what", "")
    return '<h2 id="timeline">Ledger entries of this run</h2>' + _table(headers, rows)


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
        f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{_e(title)}</title>'
        f"<style>{_CSS}</style></head><body><h1>{_e(title)}</h1>"
        f'<p class="muted">Federation {_e(spec.get("federation", "-"))}, dataset '
        f"{_e(spec.get('dataset', '-'))}, status {_e(view.status)}. Generated {generated} "
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
