"""Rich tables shared by the CLI and the demo."""

from __future__ import annotations

from rich.table import Table
from rich.text import Text

from schemas.metrics import MEAN_OF_SILOS, METRIC_NAMES, weighted_metric
from schemas.wire import Metrics, RoundOut, SiloRoundState

# column headings of the metrics the silos report (which ones follows the contract's task)
METRIC_LABELS = {
    "accuracy": "acc",
    "auc": "AUC",
    "f1_macro": "macro-F1",
    "rmse": "RMSE",
    "mae": "MAE",
    "r2": "R²",
    "loss": "loss",
}


def _fmt(x: float | None) -> str:
    if x is None:
        return "-"
    return f"{x:.4g}" if abs(x) >= 100 else f"{x:.3f}"


def reported_metrics(scored: list[Metrics]) -> list[str]:
    """The metrics any silo reported, in `METRIC_NAMES` order, loss last: the run's task's
    (binary: accuracy, AUC; multiclass: accuracy, macro-F1; regression: RMSE, MAE, R²)."""
    names = [
        n for n in METRIC_NAMES if n != "loss" and any(getattr(m, n) is not None for m in scored)
    ]
    return [*names, "loss"]


def silo_metrics_table(rounds: list[RoundOut]) -> Table | None:
    """Each silo's own metrics on its holdout or test file, for the last round that has any
    (the final model, after an evaluation round); None when no silo reported metrics."""
    last = next((r for r in reversed(rounds) if any(s.metrics for s in r.silos)), None)
    if last is None:
        return None
    scored = [s.metrics for s in last.silos if s.metrics]
    names = reported_metrics(scored)
    table = Table(
        "silo",
        "n_test",
        *[METRIC_LABELS[n] for n in names],
        title=f"per-silo metrics, round {last.round} ({last.kind}, model "
        f"v{last.input_model_version})",
    )
    for s in last.silos:
        if s.metrics is not None:
            table.add_row(
                Text(s.silo),
                str(s.metrics.n_test),
                *[_fmt(getattr(s.metrics, n)) for n in names],
            )
    return table


def _absent(r: RoundOut, s: SiloRoundState) -> str:
    """A silo that did not answer round `r`: its state and reason. A closed round waits for
    nobody: there a silo without an answer is shown by its reason (a closed asynchronous
    buffer says where the silo's update went, `aggregation.service.buffer_states`), else as
    having sent none, never as "waiting"."""
    if s.state == "waiting" and r.status != "open":
        return f"{s.silo}: {s.reason or 'no answer'}"
    why = f" ({s.cause}: {s.reason})" if s.cause else f" ({s.reason})" if s.reason else ""
    return f"{s.silo}: {s.state}{why}"


def round_table(rounds: list[RoundOut]) -> Table:
    """One row per round: who answered, who refused or is absent, and the evaluated metrics.

    Metrics in a training round are the silos' evaluation of the model the round started from
    (version round-1), combined over silos by `schemas.metrics.weighted_metric`: the pooled
    score, except ROC AUC, macro-F1 and R², shown as "mean ..." with a caption saying so; an
    evaluation round scores the final model.
    """
    names = reported_metrics([s.metrics for r in rounds for s in r.silos if s.metrics])[:-1]
    table = Table(
        "round",
        "kind",
        "status",
        "answered",
        "stage",
        "awaited",
        "refused / declined / absent",
        *[f"mean {METRIC_LABELS[n]}" if n in MEAN_OF_SILOS else METRIC_LABELS[n] for n in names],
        "model",
        title="rounds (metrics: model the round started from)",
        caption=(
            "mean "
            + ", ".join(METRIC_LABELS[n] for n in names if n in MEAN_OF_SILOS)
            + ": the silos' own scores averaged by holdout rows, not the score on all rows "
            "together (the other metrics are)"
        )
        if any(n in MEAN_OF_SILOS for n in names)
        else None,
    )
    for r in rounds:
        answered = [s for s in r.silos if s.state in ("submitted", "evaluated")]
        others = [_absent(r, s) for s in r.silos if s.state not in ("submitted", "evaluated")]
        scored = [s.metrics for s in answered if s.metrics]
        table.add_row(
            str(r.round),
            r.kind,
            r.status,
            f"{len(answered)}/{len(r.silos)}",
            Text(r.stage or r.secagg_stage or "-"),
            Text(", ".join(r.awaited) or "-"),
            Text("; ".join(others) or "-"),  # silo reasons are data, never Rich markup
            *[_fmt(weighted_metric(scored, n)) for n in names],
            f"v{r.model_version} {r.model_sha256[:10]}" if r.model_sha256 else "-",
        )
    return table
