"""Rich tables shared by the CLI and the demo."""

from __future__ import annotations

from rich.table import Table
from rich.text import Text

from schemas.metrics import weighted_metric
from schemas.wire import RoundOut


def _fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.3f}"


def round_table(rounds: list[RoundOut]) -> Table:
    """One row per round: who answered, who refused or is late, and the evaluated metrics.

    Metrics in a training round are the silos' evaluation of the model the round started from
    (version round-1), weighted by holdout size; an evaluation round scores the final model.
    """
    table = Table(
        "round",
        "kind",
        "status",
        "answered",
        "stage",
        "awaited",
        "refused / declined / late",
        "acc",
        "AUC",
        "model",
        title="rounds (metrics: model the round started from)",
    )
    for r in rounds:
        answered = [s for s in r.silos if s.state in ("submitted", "evaluated")]
        others = [
            f"{s.silo}: {s.state}"
            + (f" ({s.cause}: {s.reason})" if s.cause else f" ({s.reason})" if s.reason else "")
            for s in r.silos
            if s.state in ("refused", "waiting", "sat_out", "declined")
        ]
        scored = [s.metrics for s in answered if s.metrics]
        acc = weighted_metric(scored, "accuracy")
        auc = weighted_metric(scored, "auc")
        table.add_row(
            str(r.round),
            r.kind,
            r.status,
            f"{len(answered)}/{len(r.silos)}",
            Text(r.stage or r.secagg_stage or "-"),
            Text(", ".join(r.awaited) or "-"),
            Text("; ".join(others) or "-"),  # silo reasons are data, never Rich markup
            _fmt(acc),
            _fmt(auc),
            f"v{r.model_version} {r.model_sha256[:10]}" if r.model_sha256 else "-",
        )
    return table
