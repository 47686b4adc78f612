"""The report's sections as plain rows and facts for the templates (no markup here: the
templates escape every value and add the little markup there is)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlsplit

from pydantic import ValidationError

from flows.lineage_summary import summarize
from flows.lineage_view import RoundMetrics, RunView, as_dict, as_float, as_list, payload_of
from flows.personalization_view import personalization_rows, personalized_statements
from schemas.objectives import TASK_BY_OBJECTIVE
from schemas.specs import ModelSpec, param_shapes


@dataclass(frozen=True)
class MetricRow:
    round: int
    model_version: int | None
    who: str
    values: dict[str, Any]


def revoked_text(revocation: dict[str, Any] | None) -> str:
    """How a ``silo_revoked`` entry reads in a run's report: "revoked in round N: reason"."""
    if revocation is None:
        return ""
    reason = revocation.get("reason") or "no reason given"
    if "round" in revocation:
        when = f"round {revocation.get('round')}"
    else:  # federation-level: the silo was removed from the federation while the run went on
        when = f"the federation {revocation.get('federation')} (seq {revocation.get('seq')})"
    return f"revoked in {when}: {reason}"


def participants(view: RunView) -> list[dict[str, Any]]:
    rows = []
    for silo in view.participants:
        joined = view.joined.get(silo)
        rows.append(
            {
                "silo": silo,
                "joined": f"seq {joined.seq}, {joined.created_at}" if joined else "-",
                "refused": "; ".join(
                    str(r.get("reason")) for r in view.refused if r.get("silo") == silo
                ),
                "validations": sum(1 for v in view.validations if v.silo == silo),
                "accepted": sum(1 for u in view.accepted if u.get("silo") == silo),
                "declined": sum(1 for d in declines(view) if d["silo"] == silo),
                "revoked": revoked_text(view.revoked(silo)),
            }
        )
    return rows


def failed_expectation(f: dict[str, Any]) -> str:
    """One failed expectation for a cell: "expect_x on chol: 39 rows (31.7%)"; a table-level
    expectation (no column, no row counts) reads "expect_y on table"."""
    text = f"{f.get('expectation')} on {f.get('column') or 'table'}"
    count, percent = f.get("unexpected_count"), as_float(f.get("unexpected_percent"))
    if count is not None:
        text += f": {count} rows"
        if percent is not None:
            text += f" ({percent:.1f}%)"
    elif percent is not None:
        text += f": {percent:.1f}% of rows"
    return text


def validations(view: RunView) -> list[dict[str, Any]]:
    return [
        {
            "v": v,
            "failed": "; ".join(failed_expectation(f) for f in v.failed),
        }
        for v in sorted(view.validations, key=lambda v: (v.round, v.silo))
    ]


# (key, heading) of every metric a silo may report; a report shows those its run recorded
METRIC_HEADINGS = (
    ("accuracy", "accuracy"),
    ("auc", "AUC"),
    ("f1_macro", "macro-F1"),
    ("rmse", "RMSE"),
    ("mae", "MAE"),
    ("r2", "R²"),
    ("loss", "loss"),
)


def metric_names(metrics: list[RoundMetrics]) -> list[tuple[str, str]]:
    """(key, heading) of the metrics any entry carries: the run's task's (binary: accuracy,
    AUC; multiclass: accuracy, macro-F1; regression: RMSE, MAE, R²), then loss."""
    present = {
        k
        for m in metrics
        for values in [m.weighted, *m.per_silo.values()]
        if isinstance(values, dict)
        for k, v in values.items()
        if v is not None
    }
    return [(k, h) for k, h in METRIC_HEADINGS if k in present] or [("loss", "loss")]


def metric_rows(metrics: list[RoundMetrics]) -> list[MetricRow]:
    rows = []
    for m in metrics:
        for who, values in [("weighted", m.weighted), *sorted(m.per_silo.items())]:
            rows.append(
                MetricRow(m.round, m.model_version, who, values if isinstance(values, dict) else {})
            )
    return rows


def privacy(view: RunView) -> list[Any]:
    """Each silo's ``privacy_spent`` per round: ``epsilon`` is its total over all its runs
    so far, ``run_epsilon`` this run's own (None: not recorded, an older ledger)."""
    return sorted(view.privacy, key=lambda p: (p.silo, p.round))


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


def final_metrics(view: RunView) -> RoundMetrics | None:
    """The evaluation of the final model (else the last evaluation recorded)."""
    final = view.final_model
    matching = [m for m in view.metrics if final and m.model_version == final.version]
    chosen = matching or view.metrics
    return chosen[-1] if chosen else None


def model_facts(view: RunView) -> list[tuple[str, str, bool]]:
    """(label, text, is_code) rows of the model card."""
    spec, start, final = view.spec, view.started, view.finished_model
    trees = as_dict(spec, "trees")
    # the service names every model file .safetensors; a tree run's holds the library's format
    tree_format = TREE_FORMATS.get(str(trees.get("kind"))) if trees else None
    versions = f"{start.get('fedsilo_version')} / {start.get('git_commit')}"
    # a run that failed, was cancelled or still runs has no final model, only its last one
    last = None if final else view.final_model

    def at(model: Any) -> str:
        where = f"v{model.version} at {model.path}"
        return f"{where} ({tree_format[0]})" if tree_format else where

    models = [
        ("final model", at(final) if final else "-", False),
        ("final model sha256", final.sha256 if final else "-", bool(final)),
    ]
    if last is not None:
        models[0] = ("final model", f"none: the run {_ended(view)}", False)
        models += [
            ("last model (intermediate)", at(last), False),
            ("last model sha256", last.sha256, True),
        ]
    shown = final or last
    if tree_format and shown is not None:
        models.append((LOAD_LABEL, tree_format[1].format(path=shown.path), True))
    return [
        *(_tree_facts(trees) if trees else _torch_facts(spec)),
        ("rounds / min silos", f"{spec.get('rounds')} / {spec.get('min_silos')}", False),
        *models,
        ("config sha256", str(start.get("config_sha256")), True),
        contract_file_fact(start),
        ("fedsilo / git commit", versions, False),
        ("initial model sha256", str(start.get("initial_model_sha256")), True),
        ("status", f"{view.status}: {(view.finish or {}).get('reason') or '-'}", False),
    ]


LOAD_LABEL = "load and predict (df: the contract's encoded features, by name)"
# a tree model's real format and one line that loads it and predicts on a DataFrame whose
# columns are the contract's encoded feature names (the model names them and checks them)
TREE_FORMATS = {
    "xgboost": (
        "XGBoost JSON",
        'xgboost.Booster(model_file=bytearray(open("{path}", "rb").read()))'
        ".predict(xgboost.DMatrix(df))",
    ),
    "lightgbm": (
        "LightGBM model text; feature names with spaces as _",
        'lightgbm.Booster(model_file="{path}").predict(df, validate_features=True)',
    ),
}


def _torch_facts(spec: dict[str, Any]) -> list[tuple[str, str, bool]]:
    """A PyTorch run's model, strategy and local training."""
    model = as_dict(spec, "model")
    return [
        ("model kind", str(model.get("kind", "-")), False),
        ("features / hidden layers", f"{model.get('n_features')} / {model.get('hidden')}", False),
        ("parameters", _parameter_count(spec), False),
        ("strategy", json.dumps(spec.get("strategy"), sort_keys=True), False),
        ("local training", json.dumps(spec.get("training"), sort_keys=True), False),
    ]


def _tree_facts(trees: dict[str, Any]) -> list[tuple[str, str, bool]]:
    """A tree run's settings; the PyTorch strategy and optimiser do not apply to it."""
    objective = str(trees.get("objective"))
    if trees.get("num_class"):
        objective += f" ({trees.get('num_class')} classes)"
    rows = [
        ("model kind", f"{trees.get('kind')} trees, mode {trees.get('mode')}", False),
        ("objective / features", f"{objective} / {trees.get('n_features')}", False),
        ("trees per round", str(trees.get("trees_per_round")), False),
        ("tree parameters", json.dumps(trees.get("params"), sort_keys=True), True),
    ]
    if trees.get("secure_hist"):
        rows.append(("secure-hist", json.dumps(trees.get("secure_hist"), sort_keys=True), True))
    return rows


CONTRACT_FILE_LABEL = "data contract file sha256 (pinned at run start)"


def contract_file_fact(start: dict[str, Any]) -> tuple[str, str, bool]:
    """The model card's row for the contract file's sha256 that ``run_started`` pins (what
    ``sha256sum`` of the published contract file gives), or why there is none."""
    digest = start.get("contract_sha256")
    if not digest:
        return CONTRACT_FILE_LABEL, "not recorded in run_started", False
    return CONTRACT_FILE_LABEL, str(digest), True


def _ended(view: RunView) -> str:
    said = {"in progress": "is still running", "cancelled": "was cancelled"}
    return said.get(view.status, view.status)


def _names(value: Any) -> str:
    return ", ".join(map(str, value)) if isinstance(value, list) else str(value)


def is_asynchronous(view: RunView) -> bool:
    """Whether the run trained asynchronously (buffered rounds: updates carry a base round,
    staleness and weight)."""
    return bool(as_dict(view.spec, "asynchronous")) or any(
        "asynchronous" in a or "dropped_stale" in a for a in view.aggregates
    )


def _staleness(c: dict[str, Any]) -> str:
    """An async update: "hungary: base round 1 (v1), staleness 2, weight 0.577"."""
    weight = as_float(c.get("weight"))
    base = f"base round {c.get('base_round', '-')}"
    if c.get("base_version") is not None:
        base += f" (v{c.get('base_version')})"
    shown = f"{weight:.3f}" if weight is not None else "-"
    return f"{c.get('silo')}: {base}, staleness {c.get('staleness', '-')}, weight {shown}"


def aggregates(view: RunView) -> list[dict[str, Any]]:
    """Per aggregate: contributors with their examples; for an async run also each update's
    base round, staleness and weight, and the updates dropped as too stale."""
    rows = []
    for a in view.aggregates:
        contributors = as_list(a, "contributors")
        stale = [d for d in as_list(a, "dropped_stale") if isinstance(d, dict)]
        rows.append(
            {
                "updates": "; ".join(_staleness(c) for c in contributors if isinstance(c, dict)),
                "dropped_stale": ", ".join(
                    f"{d.get('silo')} (staleness {d.get('staleness')})" for d in stale
                ),
                "round": a.get("round"),
                "who": ", ".join(
                    f"{c.get('silo')} ({c.get('n_examples')})"
                    for c in contributors
                    if isinstance(c, dict)
                ),
                "digest": a.get("aggregate_digest"),
                "model_version": a.get("model_version"),
                "secure": a.get("secure_aggregation") is True,
            }
        )
    return rows


def _dropped(view: RunView, dropout: dict[str, Any]) -> str:
    """The silos a dropout names; a revoked one says so (it was removed, it did not drop)."""
    silos = dropout.get("silos")
    if not isinstance(silos, list):
        return _names(silos)
    named = []
    for silo in map(str, silos):
        revocation = view.revoked(silo)
        named.append(f"{silo} ({revoked_text(revocation)})" if revocation else silo)
    return ", ".join(named)


def events(view: RunView) -> list[str]:
    """Rejections, dropouts, mask recoveries and revocations, one sentence each."""
    listed = [
        f"round {r.get('round')}: {r.get('silo')} update rejected, HTTP {r.get('status')}: "
        f"{r.get('reason')}"
        for r in view.rejected
    ]
    listed += [f"round {d.get('round')}: dropped {_dropped(view, d)}" for d in view.dropouts]
    listed += [
        f"round {r.get('round')}: masks recovered from {_names(r.get('survivors'))}"
        for r in view.recoveries
    ]
    listed += [f"{r.get('silo')} {revoked_text(r)}" for r in view.revocations]
    return listed


def declines(view: RunView) -> list[dict[str, Any]]:
    """Silos' signed declines (kind ``decline``: silo, round, scope, cause, reason), by round."""
    found = []
    for entry in view.entries:
        if entry.kind == "decline":
            p = payload_of(entry)
            found.append(
                {
                    "seq": entry.seq,
                    "silo": str(p.get("silo") or entry.author.removeprefix("silo:")),
                    "round": p.get("round"),
                    "scope": p.get("scope"),
                    "cause": p.get("cause"),
                    "reason": p.get("reason"),
                }
            )
    found.sort(key=lambda d: (d["round"] if isinstance(d["round"], int) else 0, d["silo"]))
    return found


def prefect_links(view: RunView, prefect_ui_url: str | None) -> tuple[list[dict[str, Any]], bool]:
    """(who, flow run id, link or None) per flow run; whether links could be made."""
    base = (prefect_ui_url or "").rstrip("/")
    if base and urlsplit(base).scheme not in ("http", "https"):
        base = ""  # only plain web links: never javascript: or other schemes from a setting
    runs = [
        {
            "who": who,
            "run": run,
            "href": f"{base}/runs/flow-run/{quote(run, safe='')}" if base else None,
        }
        for who, run in view.prefect_flow_runs()
    ]
    return runs, bool(base)


def timeline(view: RunView, bad_seq: int | None) -> list[dict[str, Any]]:
    return [
        {
            "seq": e.seq,
            "created_at": e.created_at,
            "time": e.created_at.replace("T", " ")[:19],
            "kind": e.kind,
            "author": e.author,
            "what": summarize(e),
            "bad": e.seq == bad_seq,
        }
        for e in view.entries
    ]


def personalization(view: RunView) -> list[dict[str, Any]]:
    """Per silo: global vs personalized vs local-only on its held-out rows, from the silos'
    signed ``personalized`` statements (`flows.personalization_view`); [] without any."""
    spec = view.spec
    model, trees = spec.get("model"), spec.get("trees")
    if isinstance(model, dict):
        task = str(model.get("task", "binary"))
    elif isinstance(trees, dict):
        task = TASK_BY_OBJECTIVE.get(str(trees.get("objective")), "binary")
    else:
        return []
    try:
        return personalization_rows(personalized_statements(view.entries), task)
    except (ValidationError, ValueError):  # a malformed statement: the chain check flags it
        return []
