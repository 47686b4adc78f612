"""What a silo's Prefect flow run shows people: its name and tags, rounded metrics, and per-silo
table artifacts (the validation result of each round, the silo's metrics per round).

The flow run carries the tags; its task runs carry none (`untagged_task_runs`): Prefect asks
its server for concurrency slots before every tagged task run, a blocking request on each
round's critical path, and against a SQLite-backed Prefect server (the demo's) that request
waited 2-7 s when several silos asked at once (py-spy over `bench/round_overhead.py`).

Artifact keys are per silo (``<silo>-validation``, ``<silo>-metrics``), so the UI shows the
silo's history as versions of one key. Each version costs Prefect's server about 20 ms of CPU
(two events), so neither is re-sent every round: a validation table only when the result
differs from the one the run last showed (the ledger and the log hold every round's), and
the metrics table, re-sent whole, at most every `METRICS_EVERY_S` (the last one when the flow
run ends).

Artifacts are sent by one background thread, in order, so a round's critical path does not
wait for the Prefect API: two artifacts a round took 100-250 ms of each agent's round under
load (py-spy over `bench/round_overhead.py`). Each carries the flow and task run context it
was made in (`contextvars`), so Prefect links it as before; `drain()` waits for them, and the
silo's flow run calls it before it ends.
"""

from __future__ import annotations

import contextvars
import logging
import re
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor, wait
from typing import Any

from prefect.artifacts import create_table_artifact
from prefect.context import TagsContext

from schemas.specs import RunSpec
from schemas.wire import Metrics, ValidationSummary
from silos.config import SiloConfig

log = logging.getLogger("fedsilo.silo")


def fmt(value: float | None) -> str:
    """A metric to 4 significant digits (never a 16-digit loss in a log line)."""
    return "n/a" if value is None else f"{value:.4g}"


# the metrics a silo reports, by task: binary accuracy, auc; multiclass accuracy, f1_macro;
# regression rmse, mae, r2 (schemas.task_metrics)
_SHOWN = ("accuracy", "auc", "f1_macro", "rmse", "mae", "r2")


def _task_metrics(metrics: Metrics) -> dict[str, float | None]:
    """The reported metrics; binary's accuracy and auc always (auc may be undefined: n/a)."""
    binary = metrics.f1_macro is None and metrics.rmse is None
    return {
        name: getattr(metrics, name)
        for name in _SHOWN
        if getattr(metrics, name) is not None or (binary and name in ("accuracy", "auc"))
    }


def fmt_metrics(metrics: Metrics) -> str:
    """``loss=0.4321 accuracy=0.8123 auc=0.9012`` (or the task's: f1_macro, rmse, mae, r2)."""
    shown = " ".join(f"{k}={fmt(v)}" for k, v in _task_metrics(metrics).items())
    return f"loss={fmt(metrics.loss)} {shown}"


def model_name(spec: RunSpec) -> str:
    if spec.model is not None:
        return spec.model.kind
    return spec.trees.kind if spec.trees is not None else "unknown"


def flow_run_name(silo: str, run_id: str) -> str:
    return f"{silo}-{run_id}"


def flow_tags(
    config: SiloConfig, run_id: str, spec: RunSpec | None, coordinator: str | None = None
) -> list[str]:
    """federation, silo, dataset (the contract), model and run (the coordinator's flow run
    carries the same ``run:`` tag), and ``coordinator-run:<its Prefect id>`` when the round
    task names it."""
    tags = [
        f"federation:{config.silo.federation}",
        f"silo:{config.silo.name}",
        f"dataset:{config.data.contract}",
        f"run:{run_id}",
    ]
    if spec is not None:
        tags.insert(3, f"model:{model_name(spec)}")
    if coordinator:
        tags.append(f"coordinator-run:{coordinator}")
    return tags


def untagged_task_runs() -> TagsContext:
    """Inside a flow body: the task runs started here carry no tags. The flow run keeps the
    ones it was created with; a tag's only use on a task run would be a concurrency limit,
    and a silo's task runs already run one at a time."""
    return TagsContext(current_tags=set())


def _key(silo: str, what: str) -> str:
    """An artifact key (lowercase letters, digits and dashes only)."""
    return re.sub(r"[^a-z0-9-]+", "-", f"{silo}-{what}".lower()).strip("-")


# (silo, run) -> what its last validation table showed
_validation_shown: dict[tuple[str, str], tuple[object, ...]] = {}


def validation_artifact(silo: str, run_id: str, round_: int, summary: ValidationSummary) -> bool:
    """A table of each expectation that failed (or one row saying all passed), when it differs
    from the last one this run showed (its first round's always). True when one was sent."""
    shown = (
        summary.data_sha256,
        summary.success,
        summary.contract,
        summary.contract_version,
        summary.n_expectations,
        tuple((f.expectation, f.column, f.unexpected_count) for f in summary.failed),
    )
    if _validation_shown.get((silo, run_id)) == shown:
        return False
    _validation_shown[(silo, run_id)] = shown
    rows: list[dict[str, Any]] = [
        {
            "round": round_,
            "expectation": f.expectation,
            "column": f.column or "(table)",
            "unexpected": f.unexpected_count,
            "unexpected %": fmt(f.unexpected_percent),
        }
        for f in summary.failed
    ] or [
        {
            "round": round_,
            "expectation": f"all {summary.n_expectations} passed",
            "column": "",
            "unexpected": 0,
            "unexpected %": "0",
        }
    ]
    status = "passed" if summary.success else "FAILED"
    _publish(
        _key(silo, "validation"),
        rows,
        f"silo {silo}, round {round_}: data {summary.data_sha256[:12]}… ({summary.n_rows} rows) "
        f"{status} contract {summary.contract} v{summary.contract_version} (the same in later "
        "rounds until the next version)",
    )
    return True


def metrics_row(round_: int, result: object) -> dict[str, Any] | None:
    """A table row from a handler's result (a `Metrics`, or a dict with ``metrics``)."""
    extra: dict[str, Any] = {}
    if isinstance(result, dict) and isinstance(result.get("metrics"), Metrics):
        extra = {"rows": result.get("n_examples"), "train s": fmt(result.get("train_seconds"))}
        metrics = result["metrics"]
    elif isinstance(result, Metrics):
        metrics = result
    else:
        return None
    return {
        "round": round_,
        "loss": fmt(metrics.loss),
        **{k: fmt(v) for k, v in _task_metrics(metrics).items()},
        **extra,
    }


METRICS_EVERY_S = 10.0
_metrics_due: dict[str, float] = {}  # key -> when (monotonic) its next version may go
_metrics_held: dict[str, tuple[contextvars.Context, list[dict[str, Any]], str]] = {}


def metrics_artifact(silo: str, run_id: str, rows: list[dict[str, Any]]) -> None:
    """The silo's metrics for every round so far (the model it received, on its holdout): sent
    now, or held until `METRICS_EVERY_S` after the last version (`drain` sends what is held)."""
    key = _key(silo, "metrics")
    description = (
        f"silo {silo}, run {run_id}: the round's input model on the local holdout, per round"
    )
    now = time.monotonic()
    with _lock:
        if now < _metrics_due.get(key, 0.0):
            _metrics_held[key] = (contextvars.copy_context(), list(rows), description)
            return
        _metrics_due[key] = now + METRICS_EVERY_S
        _metrics_held.pop(key, None)
    _publish(key, list(rows), description)


_sender: ThreadPoolExecutor | None = None
_pending: list[Future[None]] = []
_lock = threading.Lock()


def _publish(
    key: str,
    rows: list[dict[str, Any]],
    description: str,
    context: contextvars.Context | None = None,
) -> None:
    """Queue one table artifact, made in the caller's flow/task run context (or `context`)."""
    global _sender
    context = context or contextvars.copy_context()
    with _lock:
        if _sender is None:  # one thread: a key's versions arrive in the order they were made
            _sender = ThreadPoolExecutor(1, thread_name_prefix="fedsilo-artifacts")
        _pending[:] = [f for f in _pending if not f.done()]
        _pending.append(_sender.submit(context.run, _create, key, rows, description))


def _create(key: str, rows: list[dict[str, Any]], description: str) -> None:
    try:
        create_table_artifact(rows, key=key, description=description)
    except Exception as exc:  # an artifact is a view for people: never fail a round over it
        log.debug("artifact %s not published: %s", key, exc)


def drain(timeout_s: float = 60.0) -> None:
    """Send the metrics tables held back, then wait until the artifacts queued so far are sent
    (or `timeout_s` passed)."""
    with _lock:
        held = list(_metrics_held.items())
        _metrics_held.clear()
        _metrics_due.clear()
    for key, (context, rows, description) in held:
        _publish(key, rows, description, context)
    with _lock:
        pending = list(_pending)
    wait(pending, timeout=timeout_s)
