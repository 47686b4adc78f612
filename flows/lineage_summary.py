"""One-line summaries of ledger entries, for `fedsilo lineage show` and the report's timeline."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from flows.lineage_view import as_dict, as_float, as_list, payload_of
from schemas.lineage import LineageEntry
from schemas.metrics import federation_name


def _short(digest: Any, n: int = 12) -> str:
    return str(digest)[:n] if digest else "-"


def _metric_text(weighted: dict[str, Any]) -> str:
    parts = []
    for name in ("accuracy", "auc", "f1_macro", "rmse", "mae", "r2", "loss"):  # the task's
        value = as_float(weighted.get(name))
        if value is not None:
            shown = federation_name(name)
            parts.append(f"{shown} {value:.4g}" if abs(value) >= 100 else f"{shown} {value:.3f}")
    return ", ".join(parts) or "no weighted metrics"


def _contributors(p: dict[str, Any]) -> str:
    items = as_list(p, "contributors")
    return ", ".join(str(c.get("silo")) for c in items if isinstance(c, dict)) or "-"


def _failed_names(p: dict[str, Any]) -> str:
    failed = as_list(p, "failed")
    names = [
        f"{f.get('expectation')}({f.get('column') or 'table'})"
        for f in failed
        if isinstance(f, dict)
    ]
    return "; ".join(names)


def _trained(p: dict[str, Any]) -> str:
    """What a vertical run's end counts: epochs (logistic regression) or trees."""
    return f"{p['epochs']} epochs" if p.get("epochs") else f"{p.get('trees')} trees"


def _epsilons(p: dict[str, Any]) -> str:
    """A ``privacy_spent`` payload's epsilons: ``epsilon`` is the silo's total over all its
    runs so far; ``run_epsilon`` (absent from older ledgers) is this run's own."""
    run = p.get("run_epsilon")
    share = f"this run's epsilon {run}" if run is not None else "this run's share not recorded"
    return f"{share}; silo's total epsilon over all its runs so far {p.get('epsilon')}"


def _revoked(p: dict[str, Any]) -> str:
    """A ``silo_revoked`` entry: run-scoped (``round``) or federation-level (``runs``)."""
    reason = p.get("reason") or "no reason given"
    if "runs" in p or "round" not in p:
        runs = ", ".join(map(str, as_list(p, "runs"))) or "none"
        where = f"from federation {p.get('federation')} (runs in progress: {runs})"
    else:
        where = f"in round {p.get('round')} of this run"
    return f"{p.get('silo')} REVOKED {where}: {reason}; key {_short(p.get('public_key'))}"


_SUMMARIES: dict[str, Callable[[dict[str, Any]], str]] = {
    "run_started": lambda p: (
        f"config {_short(p.get('config_sha256'))}, fedsilo {p.get('fedsilo_version')}, "
        f"silos {', '.join(map(str, p.get('participants') or []))}"
    ),
    "silo_joined": lambda p: f"{p.get('silo')} joined {p.get('federation')}",
    "silo_refused": lambda p: f"{p.get('silo')} refused: {p.get('reason')}",
    "validation_result": lambda p: (
        f"{p.get('silo')} round {p.get('round')}: {p.get('contract')} "
        f"v{p.get('contract_version')} {'PASS' if p.get('success') is True else 'FAIL'}, "
        f"{p.get('n_rows')} rows, data {_short(p.get('data_sha256'))}"
        + (f" [{_failed_names(p)}]" if p.get("success") is not True else "")
    ),
    "update_accepted": lambda p: (
        f"{p.get('silo')} round {p.get('round')}: update {_short(p.get('digest'))}, "
        f"{p.get('n_examples')} examples"
    ),
    "update_rejected": lambda p: (
        f"{p.get('silo')} round {p.get('round')}: HTTP {p.get('status')} {p.get('reason')}"
    ),
    "aggregate": lambda p: (
        f"round {p.get('round')}: v{p.get('model_version')} from {_contributors(p)}"
        f"{' (secure aggregation)' if p.get('secure_aggregation') is True else ''}, "
        f"digest {_short(p.get('aggregate_digest'))}"
    ),
    "model_saved": lambda p: (
        f"v{p.get('version')} sha256 {_short(p.get('sha256'))} at {p.get('path')}"
    ),
    "metrics": lambda p: (
        f"round {p.get('round')}, model v{p.get('model_version')}: "
        f"{_metric_text(as_dict(p, 'weighted'))}"
    ),
    "dropout": lambda p: (
        f"round {p.get('round')}: dropped {', '.join(map(str, p.get('silos') or []))}"
    ),
    "round_failed": lambda p: f"round {p.get('round')} ({p.get('kind')}): {p.get('reason')}",
    "recovery": lambda p: (
        f"round {p.get('round')}: recovered with {', '.join(map(str, p.get('survivors') or []))}"
    ),
    "privacy_spent": lambda p: (
        f"{p.get('silo')} round {p.get('round')}: {_epsilons(p)} "
        f"(delta {p.get('delta')}, noise {p.get('noise_multiplier')}, clip {p.get('clip_norm')})"
    ),
    "silo_revoked": lambda p: _revoked(p),
    "run_finished": lambda p: (
        f"{p.get('status')}: final v{p.get('final_model_version')} "
        f"{_short(p.get('final_model_sha256'))}" + (f" ({p['reason']})" if p.get("reason") else "")
    ),
    "run_failed": lambda p: f"{p.get('status')}: {p.get('reason')}",
    "vertical_started": lambda p: (
        f"{p.get('mode')}: parties {', '.join(map(str, p.get('parties') or []))} (active "
        f"{p.get('active')}), {p.get('params')}"
        + (f", model of run {p['model_run']}" if p.get("model_run") else "")
    ),
    "vertical_psi": lambda p: (
        f"{p.get('party')}: intersection of {p.get('size')} ids, hash {_short(p.get('digest'))}"
    ),
    "vertical_tree": lambda p: (
        f"tree {p.get('tree')}: splits by "
        + ", ".join(
            f"{n.get('party')}@{n.get('depth')}" for n in as_list(p, "nodes") if isinstance(n, dict)
        )
        + f"; {p.get('leaves')} leaves"
    ),
    "vertical_epoch": lambda p: (
        f"epoch {p.get('epoch')}: {p.get('steps')} steps over {p.get('rows')} rows"
    ),
    "vertical_finished": lambda p: (
        f"finished: {_trained(p)}, active half {_short(p.get('model_digest'))}"
    ),
    "vertical_failed": lambda p: f"failed: {p.get('reason')}",
}


def summarize(entry: LineageEntry) -> str:
    """One line saying what an entry records, for timelines and reports."""
    p = payload_of(entry)
    if not p and entry.payload != "{}":
        return "payload is not a JSON object (altered?)"
    render = _SUMMARIES.get(entry.kind)
    if render is None:
        return ", ".join(f"{k}={v}" for k, v in sorted(p.items()))[:160]
    return str(render(p))
