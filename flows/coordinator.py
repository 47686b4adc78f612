"""The coordinator's Prefect flow `federated_training`: one flow run per training run.

It opens rounds on the aggregation service, waits for the silos with a deadline, has the
service aggregate, follows the silos' evaluation of each global model, stops early on a
plateau, and publishes a table artifact of per-round metrics plus the final model's sha256.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run

from flows.admin_token import resolve_admin_token
from flows.exceptions import RunFailed
from flows.resume import closed_rounds, find_run, wall_seconds
from flows.service_client import CoordinatorClient
from schemas import tensors
from schemas.contracts.loader import load_contract
from schemas.metrics import weighted_metric
from schemas.specs import (
    ModelSpec,
    PrivacySpec,
    RunSpec,
    SecureAggregationSpec,
    StrategySpec,
    TrainingSpec,
    param_shapes,
)
from schemas.tree_params import TreeSpec
from schemas.wire import RoundOpen, RoundOut, RunCreate, RunFinish
from silos.torch_model import build_model, get_params


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

    @property
    def overhead_seconds(self) -> float:
        return self.wall_seconds - self.slowest_train_seconds


def summarize_round(out: RoundOut, wall_seconds: float) -> RoundRecord:
    """Weighted (by holdout size) metrics of the model the silos evaluated in this round."""
    scored = [s.metrics for s in out.silos if s.metrics is not None]

    def mean(attr: str) -> float | None:
        return weighted_metric(scored, attr)

    return RoundRecord(
        round=out.round,
        kind=out.kind,
        status=out.status,
        contributors=[s.silo for s in out.silos if s.state in ("submitted", "evaluated")],
        waiting=[s.silo for s in out.silos if s.state == "waiting"],
        refused={s.silo: s.reason or "" for s in out.silos if s.state == "refused"},
        sat_out={s.silo: s.reason or "" for s in out.silos if s.state == "sat_out"},
        wall_seconds=wall_seconds,
        slowest_train_seconds=max((s.train_seconds or 0.0 for s in out.silos), default=0.0),
        evaluated_version=out.input_model_version,
        loss=mean("loss"),
        accuracy=mean("accuracy"),
        auc=mean("auc"),
        model_sha256=out.model_sha256,
        per_silo={
            s.silo: {"accuracy": s.metrics.accuracy, "auc": s.metrics.auc, "loss": s.metrics.loss}
            for s in out.silos
            if s.metrics is not None
        },
    )


@task(cache_policy=NO_CACHE, name="create-run")
def create_run(client: CoordinatorClient, spec: RunSpec) -> str:
    run = client.create_run(RunCreate(spec=spec, prefect_flow_run_id=str(flow_run.get_id() or "")))
    if spec.trees is not None:
        payload = b""  # tree runs grow from scratch
    else:
        model = build_model(spec.torch_model, seed=spec.training.seed)
        names = [n for n, _ in param_shapes(spec.torch_model)]
        payload = tensors.encode(dict(zip(names, get_params(model), strict=True)), {"version": "0"})
    client.put_initial_model(run.run_id, payload)
    client.start_run(run.run_id)
    get_run_logger().info("run %s started with silos %s", run.run_id, run.participants)
    return run.run_id


@task(cache_policy=NO_CACHE, name="run-round", task_run_name="round-{number}-{kind}")
def run_round(
    client: CoordinatorClient, run_id: str, number: int, kind: str, deadline_s: float
) -> RoundRecord:
    """Open a round, wait until every silo answered or the deadline passed, then close it."""
    started = time.monotonic()
    client.open_round(run_id, RoundOpen(round=number, kind=kind, deadline_s=deadline_s))  # type: ignore[arg-type]
    deadline, forced = started + deadline_s, 0
    while True:
        remaining = deadline - time.monotonic()
        out = client.wait_round(run_id, number, wait_s=max(0.0, min(remaining, 20.0)))
        if out.status != "open":
            break
        if out.complete and out.secagg_stage is None:
            out = client.close_round(run_id, number)
            break
        if remaining <= 0:
            late = [s.silo for s in out.silos if s.state == "waiting"]
            get_run_logger().warning(
                "round %d: deadline passed at stage %s without %s",
                number,
                out.secagg_stage or "collect",
                late or "the unmasking answers",
            )
            out = client.close_round(run_id, number)
            forced += 1
            # five protocol stages with the consistency check, and slack for a slow unmask
            if out.status != "open" or forced > 8:
                break
            deadline = time.monotonic() + deadline_s  # the remaining protocol stages get time
    record = summarize_round(out, time.monotonic() - started)
    if out.status == "open":
        raise RunFailed(
            f"round {number} still at stage {out.secagg_stage} after {forced} deadlines"
        )
    if out.status == "failed":
        raise RunFailed(out.reason or f"round {number} failed")
    return record


@task(cache_policy=NO_CACHE, name="save-model")
def save_model(
    client: CoordinatorClient, run_id: str, version: int, output_dir: Path, suffix: str
) -> tuple[str, str]:
    """Save a model version with a `.sha256` file beside it; `suffix` names its format."""
    payload = client.download_model(run_id, version)
    output_dir.mkdir(parents=True, exist_ok=True)
    path = output_dir / f"{run_id}-v{version}{suffix}"
    path.write_bytes(payload)
    sha = hashlib.sha256(payload).hexdigest()
    (output_dir / f"{path.name}.sha256").write_text(f"{sha}  {path.name}\n")
    return str(path), sha


def _round(
    done: dict[int, RoundOut],
    client: CoordinatorClient,
    run_id: str,
    number: int,
    kind: str,
    deadline_s: float,
) -> RoundRecord:
    """A round the service closed before this flow run (re)started, or a round run now."""
    out = done.get(number)
    if out is None:
        return run_round(client, run_id, number, kind, deadline_s)
    if out.status == "failed":
        raise RunFailed(out.reason or f"round {number} failed")
    return summarize_round(out, wall_seconds(out))


def model_suffix(spec: RunSpec) -> str:
    """File suffix of the run's native model format."""
    if spec.trees is None:
        return ".safetensors"
    return ".json" if spec.trees.kind == "xgboost" else ".txt"


def _plateaued(records: list[RoundRecord], patience: int) -> bool:
    losses = [r.loss for r in records if r.loss is not None]
    if patience <= 0 or len(losses) <= patience:
        return False
    best_before = min(losses[:-patience])
    return min(losses[-patience:]) >= best_before - 1e-4


def lineage_markdown(client: CoordinatorClient, run_id: str, model_path: str, sha: str) -> str:
    """The run's lineage summary for Prefect, with the command that verifies it."""
    entries = client.ledger(run_id)
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


def _publish(
    client: CoordinatorClient, records: list[RoundRecord], run_id: str, model_path: str, sha: str
) -> None:
    rows = [
        {
            "round": r.round,
            "kind": r.kind,
            "model evaluated": f"v{r.evaluated_version}",
            "silos": ", ".join(r.contributors),
            "refused": "; ".join(f"{k}: {v}" for k, v in r.refused.items()),
            "sat out (validation)": "; ".join(f"{k}: {v}" for k, v in r.sat_out.items()),
            "loss": None if r.loss is None else round(r.loss, 4),
            "accuracy": None if r.accuracy is None else round(r.accuracy, 4),
            "auc": None if r.auc is None else round(r.auc, 4),
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
        key=f"lineage-{run_id}", markdown=lineage_markdown(client, run_id, model_path, sha)
    )


# A retried flow run (Prefect retries, or `prefect flow-run retry` after a crash) resumes its
# run on the service where it stopped: see flows/resume.py. Prefect stores and shows every
# parameter, so the admin token is not one: the flow reads it from a file or a Secret block
# (flows/admin_token.py).
@flow(
    name="federated_training",
    flow_run_name="{federation}-{dataset}",
    retries=2,
    retry_delay_seconds=5,
)
def federated_training(
    service_urls: list[str],
    federation: str,
    dataset: str,
    model: ModelSpec | None = None,
    strategy: StrategySpec = StrategySpec(),
    training: TrainingSpec = TrainingSpec(),
    rounds: int = 10,
    min_silos: int = 2,
    round_deadline_s: float = 120.0,
    patience: int = 0,
    silos: list[str] | None = None,
    output_dir: str = "models",
    secure_aggregation: SecureAggregationSpec = SecureAggregationSpec(),
    privacy: PrivacySpec | None = None,
    federation_statistics: bool | None = None,
    resume_run_id: str | None = None,
    admin_token_file: str | None = None,
    trees: TreeSpec | None = None,
    admin_token_block: str | None = None,
) -> dict[str, object]:
    """Train a global model across the federation's silos and save it with its sha256.

    Give `model` for a PyTorch model or `trees` for XGBoost / LightGBM (then turn
    `secure_aggregation` off: tree updates are sealed to the service instead). The admin
    token comes from `admin_token_file` (the path of a file only its owner may read) or
    `admin_token_block` (the name of a Prefect Secret block), never from a parameter's value.
    """
    logger = get_run_logger()
    token = resolve_admin_token(admin_token_file, admin_token_block)
    spec = RunSpec(
        federation=federation,
        dataset=dataset,
        model=model,
        trees=trees,
        strategy=strategy,
        training=training,
        rounds=rounds,
        min_silos=min_silos,
        round_deadline_s=round_deadline_s,
        patience=patience,
        silos=tuple(silos or ()),
        secure_aggregation=secure_aggregation,
        privacy=privacy,
        federation_statistics=(
            load_contract(dataset).pipeline.needs_federation_stats
            if federation_statistics is None
            else federation_statistics
        ),
    )
    client = CoordinatorClient(service_urls, token=token)
    resumed = find_run(client, federation, str(flow_run.get_id() or ""), resume_run_id)
    done: dict[int, RoundOut] = {}
    if resumed is None:
        run_id = create_run(client, spec)
    else:  # the rounds the service already closed are replayed, not trained again
        run_id, spec, done = resumed.run_id, resumed.spec, closed_rounds(client, resumed.run_id)
        logger.info("resuming run %s after round %d", run_id, max(done, default=0))
    records: list[RoundRecord] = []
    try:
        first = 1
        if spec.federation_statistics:  # feature statistics first, securely summed
            records.append(_round(done, client, run_id, 1, "statistics", spec.round_deadline_s))
            first = 2
        for number in range(first, first + spec.rounds):
            records.append(_round(done, client, run_id, number, "train", spec.round_deadline_s))
            logger.info(
                "round %d: silos %s, model v%d loss %s",
                number,
                records[-1].contributors,
                records[-1].evaluated_version,
                records[-1].loss,
            )
            if _plateaued(records, spec.patience):
                logger.info("stopping early: no improvement in %d rounds", spec.patience)
                break
        final = records[-1].round
        records.append(_round(done, client, run_id, final + 1, "evaluate", spec.round_deadline_s))
    except RunFailed as exc:
        client.finish_run(run_id, RunFinish(status="failed", reason=str(exc)))
        raise
    client.finish_run(run_id, RunFinish(status="finished", final_model_version=final))
    model_path, sha = save_model(client, run_id, final, Path(output_dir), model_suffix(spec))
    _publish(client, records, run_id, model_path, sha)
    return {
        "run_id": run_id,
        "model_path": model_path,
        "model_sha256": sha,
        "final_version": final,
        "rounds": [asdict(r) for r in records],
    }
