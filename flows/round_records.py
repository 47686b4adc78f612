"""The coordinator's record of each round, and what it publishes to Prefect at the end: the
per-round table artifact (who answered, refused, sat out or declined, metrics rounded to 4
significant digits) and the lineage summary with the commands that verify it."""

from __future__ import annotations

from dataclasses import dataclass, field

from prefect.artifacts import create_markdown_artifact, create_table_artifact

from flows.drift_view import drift_by_round, drift_rows
from flows.round_progress import declined
from flows.service_client import CoordinatorClient
from schemas.lineage import LineageEntry
from schemas.metrics import METRIC_NAMES, federation_name, weighted_metric
from schemas.wire import RoundOut


def sig4(x: float | None) -> float | None:
    """A metric rounded to 4 significant digits, for logs and artifacts."""
    return None if x is None else float(f"{x:.4g}")


@dataclass
class RoundRecord:
    round: int
    kind: str
    status: str
    contributors: list[str]
    waiting: list[str]
    refused: dict[str, str]
    sat_out: dict[str, str]
    wall_seconds: float
    slowest_train_seconds: float
    evaluated_version: int
    loss: float | None
    accuracy: float | None
    auc: float | None
    model_sha256: str | None = None
    per_silo: dict[str, dict[str, float | None]] = field(default_factory=dict)
    declined: dict[str, str] = field(default_factory=dict)  # silo -> "cause: reason"
    # every weighted metric of `METRIC_NAMES`; the task's are set, the others None
    metrics: dict[str, float | None] = field(default_factory=dict)

    @property
    def overhead_seconds(self) -> float:
        return self.wall_seconds - self.slowest_train_seconds


def summarize_round(out: RoundOut, wall_seconds: float) -> RoundRecord:
    """Weighted (by holdout size) metrics of the model the silos evaluated in this round."""
    scored = [s.metrics for s in out.silos if s.metrics is not None]

    def mean(attr: str) -> float | None:
        return weighted_metric(scored, attr)

    names = [n for n in METRIC_NAMES if any(getattr(m, n) is not None for m in scored)]

    return RoundRecord(
        round=out.round,
        kind=out.kind,
        status=out.status,
        contributors=[s.silo for s in out.silos if s.state in ("submitted", "evaluated")],
        waiting=[s.silo for s in out.silos if s.state == "waiting"],  # closed: never answered
        refused={s.silo: s.reason or "" for s in out.silos if s.state == "refused"},
        sat_out={s.silo: s.reason or "" for s in out.silos if s.state == "sat_out"},
        wall_seconds=wall_seconds,
        slowest_train_seconds=max((s.train_seconds or 0.0 for s in out.silos), default=0.0),
        evaluated_version=out.input_model_version,
        loss=mean("loss"),
        accuracy=mean("accuracy"),
        auc=mean("auc"),
        model_sha256=out.model_sha256,
        per_silo={  # the metrics any silo reported (the task's), None where one silo had none
            s.silo: {name: getattr(s.metrics, name) for name in names}
            for s in out.silos
            if s.metrics is not None
        },
        declined=declined(out),
        metrics={name: mean(name) for name in METRIC_NAMES},
    )


def reported(records: list[RoundRecord]) -> list[str]:
    """The metrics any round reported (the run's task's), in `METRIC_NAMES` order."""
    return [n for n in METRIC_NAMES if any(r.metrics.get(n) is not None for r in records)]


def lineage_markdown(
    client: CoordinatorClient,
    run_id: str,
    model_path: str,
    sha: str,
    entries: list[LineageEntry] | None = None,
) -> str:
    """The run's lineage summary for Prefect, with the command that verifies it."""
    entries = client.ledger(run_id) if entries is None else entries
    counts: dict[str, int] = {}
    for e in entries:
        counts[e.kind] = counts.get(e.kind, 0) + 1
    rows = "\n".join(f"| {kind} | {n} |" for kind, n in sorted(counts.items()))
    url = client.urls[0]
    return (
        f"# Lineage of run `{run_id}`\n\nFinal model: `{model_path}`  \nsha256: `{sha}`\n\n"
        f"Ledger entries for this run (seq {entries[0].seq}–{entries[-1].seq}, head hash "
        f"`{entries[-1].entry_hash[:16]}…`):\n\n| kind | entries |\n|---|---|\n{rows}\n\n"
        "Verify the whole chain, every signature and every model file:\n\n"
        f"```\nfedsilo lineage verify --service-url {url} --token-file ADMIN_TOKEN_FILE\n"
        f"fedsilo report {run_id} --service-url {url} --token-file ADMIN_TOKEN_FILE\n```\n"
        if entries
        else f"# Run `{run_id}`\n\nNo ledger entries found.\n"
    )


def publish(
    client: CoordinatorClient, records: list[RoundRecord], run_id: str, model_path: str, sha: str
) -> None:
    names = reported(records) or ["loss"]
    entries = client.ledger(run_id)
    drift = drift_by_round(drift_rows(entries))  # silos that trained with on_drift = "warn"
    rows = [
        {
            "round": r.round,
            "kind": r.kind,
            "model evaluated": f"v{r.evaluated_version}",
            "silos": ", ".join(r.contributors),
            "refused": "; ".join(f"{k}: {v}" for k, v in r.refused.items()),
            "sat out (validation)": "; ".join(f"{k}: {v}" for k, v in r.sat_out.items()),
            "declined": "; ".join(f"{k}: {v}" for k, v in r.declined.items()),
            "drift warnings": drift.get(r.round, ""),
            **{federation_name(name): sig4(r.metrics.get(name)) for name in names},
            "wall s": round(r.wall_seconds, 3),
            "overhead s": round(r.overhead_seconds, 3),
        }
        for r in records
    ]
    create_table_artifact(
        key=f"rounds-{run_id}",
        table=rows,
        description=f"Per-round metrics of federated run {run_id}",
    )
    create_markdown_artifact(
        key=f"lineage-{run_id}",
        markdown=lineage_markdown(client, run_id, model_path, sha, entries),
    )
