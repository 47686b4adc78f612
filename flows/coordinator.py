"""The coordinator's Prefect flow `federated_training`: one flow run per training run.

It waits until the run's silos are ready (so round 1's deadline does not pay for a cold
start), opens rounds on the aggregation service one after the other, waits for the silos with a
deadline, has the service aggregate, follows the silos' evaluation of each global model, stops
early on a plateau, and publishes a table artifact of per-round metrics plus the final model's
sha256. A run cancelled at the service (`fedsilo runs cancel`) ends the flow run Cancelled.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, cast

from prefect import allow_failure, flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run
from prefect.states import Cancelled, State
from prefect.utilities.annotations import quote
from rich.console import Console

from flows.admin_token import resolve_admin_token
from flows.contract_publish import resolve_run_contract
from flows.distill_view import run_distill
from flows.ensemble_view import run_ensemble
from flows.exceptions import RoundFailed, RunCancelled, RunFailed
from flows.flow_cancel import cancel_service_run
from flows.flow_retries import no_more_retries, refusals_are_final
from flows.personalization_view import run_personalization
from flows.resume import closed_rounds, find_run, wall_seconds
from flows.round_progress import RoundView, check_cancelled, stage_of, wait_ready
from flows.round_records import RoundRecord, publish, sig4, summarize_round
from flows.run_naming import initial_name, label_flow_run
from flows.service_client import CoordinatorClient
from schemas import tensors
from schemas.distill import DistillSpec
from schemas.ensemble import EnsembleSpec
from schemas.metrics import federation_name
from schemas.specs import (
    AsyncSpec,
    ModelSpec,
    PersonalizationSpec,
    PrivacySpec,
    RunSpec,
    SecureAggregationSpec,
    StrategySpec,
    TrainingSpec,
    param_shapes,
)
from schemas.tree_params import TreeSpec
from schemas.wire import RoundOpen, RoundOut, RunCreate, RunFinish, RunOut
from silos.client_errors import Conflict, ServiceRejected
from silos.torch_model import build_model, get_params

# A long-poll returns early on any change; the cap bounds how late a cancel is noticed.
POLL_S = 10.0
# An asynchronous run fails when this many buffers in a row fail (a federation that cannot
# form a working cohort should stop, not spend every remaining deadline).
MAX_FAILED_BUFFERS = 3


@task(cache_policy=NO_CACHE, name="create-run")
def create_run(client: CoordinatorClient, spec: RunSpec) -> RunOut:
    run = client.create_run(RunCreate(spec=spec, prefect_flow_run_id=str(flow_run.get_id() or "")))
    if spec.trees is not None or spec.distill is not None or spec.ensemble is not None:
        # tree runs grow from scratch; a distillation run has no soft labels yet; an
        # ensemble run has no members yet
        payload = b""
    else:
        model = build_model(spec.torch_model, seed=spec.training.seed)
        names = [n for n, _ in param_shapes(spec.torch_model)]
        payload = tensors.encode(dict(zip(names, get_params(model), strict=True)), {"version": "0"})
    client.put_initial_model(run.run_id, payload)
    client.start_run(run.run_id)
    get_run_logger().info("run %s started with silos %s", run.run_id, run.participants)
    return client.get_run(run.run_id)


@task(cache_policy=NO_CACHE, name="wait-for-ready-silos")
def wait_for_ready(
    client: CoordinatorClient, run: RunOut, timeout_s: float, view: RoundView
) -> list[str]:
    """Round 1 opens once the run's silos are ready (see `flows.round_progress.wait_ready`)."""
    return wait_ready(
        client, run.run_id, run.federation, run.participants, run.spec.min_silos, timeout_s, view
    )


@task(cache_policy=NO_CACHE, name="run-round", task_run_name="round-{number}-{kind}")
def run_round(
    client: CoordinatorClient,
    run_id: str,
    number: int,
    kind: str,
    deadline_s: float,
    view: RoundView | None = None,
    then_open: RoundOpen | None = None,
    opened: dict[int, float] | None = None,
) -> RoundRecord:
    """Open a round, wait until every silo answered or the deadline passed, then close it.

    `then_open`: the round that follows for certain, opened by this round's close in the
    same transaction (the silos get it at once, not after this task ends and the next
    starts). `opened` maps such rounds to when their opening was answered: a round found
    there is not opened again, and its wall time counts from then."""
    view = view or RoundView(None)
    opened = opened if opened is not None else {}
    started = opened.pop(number, None)
    if started is None:
        started = time.monotonic()
        try:
            client.open_round(run_id, RoundOpen(round=number, kind=kind, deadline_s=deadline_s))  # type: ignore[arg-type]
        except Conflict:  # a cancel between two rounds is a cancellation, not a failure
            check_cancelled(client, run_id)
            raise
    deadline, forced = started + deadline_s, 0
    try:
        while True:
            remaining = deadline - time.monotonic()
            out = _poll(client, run_id, number, max(0.0, min(remaining, POLL_S)))
            view.update(out, remaining)
            if out.status != "open":
                break
            if _closes_now(out):
                out = _close(client, run_id, number, then_open)
                break
            if remaining <= 0:
                get_run_logger().warning(
                    "round %d: deadline passed at stage %s; awaited: %s",
                    number,
                    stage_of(out),
                    ", ".join(out.awaited) or "nobody (the stage closes now)",
                )
                out = client.close_round(run_id, number, then_open)
                forced += 1
                # five protocol stages with the consistency check, and slack for a slow unmask
                if out.status != "open" or forced > 8:
                    break
                deadline = time.monotonic() + deadline_s  # the remaining protocol stages get time
    finally:
        view.done()
    if out.opened_next is not None:
        opened[out.opened_next] = time.monotonic()
    if out.status == "cancelled":
        check_cancelled(client, run_id)
        raise RunCancelled(f"run {run_id} was cancelled during round {number}")
    record = summarize_round(out, time.monotonic() - started)
    if out.status == "open":
        raise RunFailed(f"round {number} still at stage {stage_of(out)} after {forced} deadlines")
    if out.status == "failed":
        raise RoundFailed(out.reason or f"round {number} failed", record)
    return record


def _poll(client: CoordinatorClient, run_id: str, number: int, wait_s: float) -> RoundOut:
    """One long-poll of the round; a cancelled run ends the wait with `RunCancelled`."""
    try:
        out = client.wait_round(run_id, number, wait_s=wait_s)
    except ServiceRejected:  # the run may have been cancelled under us: say so if it was
        check_cancelled(client, run_id)
        raise
    if out.status == "open" and not _closes_now(out):
        check_cancelled(client, run_id)  # a round closed at once is checked by `_close`
    return out


def _closes_now(out: RoundOut) -> bool:
    """Every silo answered an open plain round: the coordinator closes it without waiting."""
    return out.status == "open" and out.complete and out.secagg_stage is None


def _close(
    client: CoordinatorClient, run_id: str, number: int, then_open: RoundOpen | None
) -> RoundOut:
    """Close a round every silo answered. A run cancelled since the poll closed its round as
    cancelled (the answer says so) or refuses the close: `RunCancelled` either way."""
    try:
        return client.close_round(run_id, number, then_open)
    except ServiceRejected:
        check_cancelled(client, run_id)
        raise


@task(cache_policy=NO_CACHE, name="save-model")
def save_model(
    client: CoordinatorClient, run_id: str, version: int, output_dir: Path, suffix: str
) -> tuple[str, str]:
    """Save a model version with a `.sha256` file beside it; `suffix` names its format.

    The bytes must hash to the ledger's ``model_saved`` sha256 for that version: the service's
    copy could have been altered since, and the file saved here is the one people deploy.

    Raises
    ------
    RunFailed
        The downloaded bytes differ from what the ledger records (nothing is written).
    """
    payload = client.download_model(run_id, version)
    sha = hashlib.sha256(payload).hexdigest()
    recorded = recorded_sha256(client, run_id, version)
    if sha != recorded:
        raise RunFailed(
            f"run {run_id} model v{version}: the service's copy hashes to {sha[:12]}…, the "
            f"ledger records {(recorded or 'no model_saved entry')[:12]}…; not saved (the "
            "stored model was altered: run `fedsilo lineage verify --artifacts`)"
        )
    output_dir.mkdir(parents=True, exist_ok=True)
    path = output_dir / f"{run_id}-v{version}{suffix}"
    path.write_bytes(payload)
    (output_dir / f"{path.name}.sha256").write_text(f"{sha}  {path.name}\n")
    return str(path), sha


def recorded_sha256(client: CoordinatorClient, run_id: str, version: int) -> str | None:
    """The sha256 of model `version` in the run's last ``model_saved`` entry for it (the
    ledger is read page by page: a long run has more entries than one answer holds)."""
    found, after = None, 0
    while True:
        page = client.ledger(run_id=run_id, after=after)
        for entry in page:
            if entry.kind == "model_saved":
                saved = json.loads(entry.payload)
                if saved.get("version") == version:
                    found = saved.get("sha256")
        if not page:
            return found
        after = page[-1].seq


@dataclass
class RoundSequence:
    """The run's rounds one after the other: each round's task waits for the previous task
    (`wait_for`), so Prefect's graph reads as a sequence rather than a fan-out from create-run.
    Rounds the service closed before this flow run (re)started are replayed, not run again."""

    client: CoordinatorClient
    run_id: str
    deadline_s: float
    view: RoundView
    done: dict[int, RoundOut]
    previous: State | None = None
    opened: dict[int, float] = field(default_factory=dict)  # rounds a close opened (run_round)

    def round(self, number: int, kind: str, then: str | None = None) -> RoundRecord:
        """Round `number` of `kind`; `then`: the kind of the round that follows it for certain
        (its close opens that one too), None when what follows depends on this round."""
        out = self.done.get(number)
        if out is not None:
            record = summarize_round(out, wall_seconds(out))
            if out.status == "failed":
                raise RoundFailed(out.reason or f"round {number} failed", record)
            return record
        state = run_round(
            self.client,
            self.run_id,
            number,
            kind,
            self.deadline_s,
            self.view,
            RoundOpen(round=number + 1, kind=then, deadline_s=self.deadline_s) if then else None,  # type: ignore[arg-type]
            quote(self.opened),  # the same dict, not Prefect's copy of its parameters
            # allow_failure: an asynchronous run goes on after a failed buffer's task
            wait_for=[allow_failure(self.previous)] if self.previous is not None else None,
            return_state=True,
        )
        self.previous = state
        return cast(RoundRecord, state.result())  # re-raises the round's RunFailed/RunCancelled


def model_suffix(spec: RunSpec) -> str:
    """File suffix of the run's native model format."""
    if spec.ensemble is not None:
        return ".ensemble.json"
    if spec.distill is not None:  # the last soft labels: each silo keeps its own model
        return ".soft_labels.safetensors"
    if spec.trees is None:
        return ".safetensors"
    return ".json" if spec.trees.kind == "xgboost" else ".txt"


def _plateaued(records: list[RoundRecord], patience: int) -> bool:
    losses = [r.loss for r in records if r.loss is not None]
    if patience <= 0 or len(losses) <= patience:
        return False
    best_before = min(losses[:-patience])
    return min(losses[-patience:]) >= best_before - 1e-4


# A retried flow run (Prefect retries, or `prefect flow-run retry` after a crash) resumes its
# run on the service where it stopped: see flows/resume.py. Prefect stores and shows every
# parameter, so the admin token is not one: the flow reads it from a file or a Secret block
# (flows/admin_token.py).
@flow(
    name="federated_training",
    flow_run_name=initial_name,
    retries=2,
    retry_delay_seconds=5,
    on_cancellation=[cancel_service_run],  # a Prefect cancel ends the service's run too
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
    ready_timeout_s: float = 900.0,
    show_progress: bool = False,
    asynchronous: AsyncSpec | None = None,
    personalize: PersonalizationSpec | None = None,
    distill: DistillSpec | None = None,
    ensemble: EnsembleSpec | None = None,
) -> dict[str, object] | State:
    """Train a global model across the federation's silos and save it with its sha256.

    Give `model` for a PyTorch model or `trees` for XGBoost / LightGBM (then turn
    `secure_aggregation` off: tree updates are sealed to the service instead). The admin
    token comes from `admin_token_file` (the path of a file only its owner may read) or
    `admin_token_block` (the name of a Prefect Secret block), never from a parameter's value.
    Round 1 opens once every silo of the run is ready, or after `ready_timeout_s` with at least
    `min_silos` ready (0 skips the wait). `show_progress` prints a progress line per round
    (live on a terminal): for `fedsilo train` and the demo, not for scheduled runs.
    `asynchronous` makes training rounds FedBuff buffers the service closes at K updates.
    `personalize` has every silo make its own model from the final one (it stays at the silo).
    `distill` trains a model of its own kind at each silo instead of one global model; silos
    exchange only securely averaged soft labels on a synthetic reference set (`schemas.distill`).
    `ensemble` builds a FedBoost ensemble: one member per silo (round 1), mixture weights
    learned from securely summed gradients (the other rounds); the model is the ensemble.
    """
    logger = get_run_logger()
    with refusals_are_final():  # a refusal is the same on every try: no Prefect retry
        token = resolve_admin_token(admin_token_file, admin_token_block)
        client = CoordinatorClient(service_urls, token=token)
        # the federation's published contract (pinned in the spec), never the installed package's
        contract, contract_version = resolve_run_contract(client, federation, dataset)
        spec = RunSpec(
            federation=federation,
            dataset=dataset,
            contract_version=contract_version,
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
            asynchronous=asynchronous,
            personalize=personalize,
            distill=distill,
            ensemble=ensemble,
            privacy=privacy,
            federation_statistics=(
                (contract.pipeline.needs_federation_stats or distill is not None)
                if federation_statistics is None
                else federation_statistics
            ),
        )
        resumed = find_run(client, federation, str(flow_run.get_id() or ""), resume_run_id)
        done: dict[int, RoundOut] = {}
        if resumed is None:
            created = create_run(client, spec, return_state=True)
            run: RunOut = created.result()
            previous: State | None = created
        elif resumed.status == "cancelled":  # a retry or resume of a cancelled run stays so
            label_flow_run(resumed.spec, resumed.run_id)
            return Cancelled(message=f"run {resumed.run_id} was cancelled: {resumed.reason or ''}")
        else:  # the rounds the service already closed are replayed, not trained again
            run, previous, done = resumed, None, closed_rounds(client, resumed.run_id)
            logger.info("resuming run %s after round %d", run.run_id, max(done, default=0))
    run_id, spec = run.run_id, run.spec
    label_flow_run(spec, run_id)
    view = RoundView(Console() if show_progress else None)
    records: list[RoundRecord] = []
    try:
        # the flow run has the run's tags (label_flow_run); its task runs carry none, so
        # Prefect asks its server for no concurrency slots before each round (silos.flow_report)
        ready = wait_for_ready(
            client,
            run,
            ready_timeout_s,
            view,
            wait_for=[previous] if previous else None,
            return_state=True,
        )
        ready.result()
        sequence = RoundSequence(client, run_id, spec.round_deadline_s, view, done, ready)
        records, final = _train(sequence, spec, logger)
    except RunCancelled as exc:
        logger.warning("%s", exc)
        return Cancelled(message=str(exc))
    except RunFailed as exc:
        client.finish_run(run_id, RunFinish(status="failed", reason=str(exc)))
        no_more_retries()  # a retry would only find the run failed ("failed earlier")
        raise
    client.finish_run(run_id, RunFinish(status="finished", final_model_version=final))
    model_path, sha = save_model(client, run_id, final, Path(output_dir), model_suffix(spec))
    publish(client, records, run_id, model_path, sha)
    return {
        "run_id": run_id,
        "model_path": model_path,
        "model_sha256": sha,
        "final_version": final,
        "rounds": [asdict(r) for r in records],
        "personalized": run_personalization(client, run_id, spec),  # per silo, from the ledger
        "distilled": run_distill(client, run_id, spec),  # per silo, from the ledger
        "ensemble": run_ensemble(client, run_id, spec),  # per silo, from the ledger
    }


def _train(rounds: RoundSequence, spec: RunSpec, logger: Any) -> tuple[list[RoundRecord], int]:
    """Statistics (if the pipeline needs them), training rounds, then the final evaluation.

    A failed round fails a synchronous run. An asynchronous run records a failed buffer (its
    cohort's updates are lost, e.g. too few survivors to unmask) and opens the next one, which
    starts from the last model the service made; a silo of the failed cohort trains anew.
    `MAX_FAILED_BUFFERS` failures in a row, or no buffer that made a model, fail the run."""
    records: list[RoundRecord] = []
    first = 1
    if spec.federation_statistics:  # feature statistics first, securely summed
        records.append(rounds.round(1, "statistics", then="train"))
        first = 2
    last = first + spec.rounds - 1
    # What follows a training round is certain unless it may stop early (patience) or is an
    # asynchronous buffer (a failed one is followed too, from the last model): then its own
    # close opens the next round
    certain = spec.patience <= 0 and spec.asynchronous is None
    after_last = "evaluate" if spec.distill is None else None
    failed_in_a_row = 0
    for number in range(first, last + 1):
        then = ("train" if number < last else after_last) if certain else None
        try:
            r = rounds.round(number, "train", then=then)
        except RoundFailed as exc:
            if spec.asynchronous is None:
                raise
            records.append(cast(RoundRecord, exc.record))
            failed_in_a_row += 1
            if failed_in_a_row >= MAX_FAILED_BUFFERS:
                raise RunFailed(
                    f"{failed_in_a_row} asynchronous buffers in a row failed "
                    f"(rounds {number - failed_in_a_row + 1}-{number}); the last: {exc}"
                ) from exc
            logger.warning(
                "buffer %d failed (%s); the next buffer starts from the last model", number, exc
            )
            continue
        failed_in_a_row = 0
        records.append(r)
        logger.info(
            "round %d: silos %s, model v%d %s",
            number,
            ", ".join(r.contributors),
            r.evaluated_version,
            " ".join(
                f"{federation_name(k)} {sig4(v)}" for k, v in r.metrics.items() if v is not None
            )
            or "-",
        )
        if r.declined:
            logger.info(
                "round %d: declined %s",
                number,
                "; ".join(f"{k} ({v})" for k, v in r.declined.items()),
            )
        if _plateaued(records, spec.patience):
            logger.info("stopping early: no improvement in %d rounds", spec.patience)
            break
    # a model's version is the number of the round that made it
    made = [r.round for r in records if r.kind == "train" and r.status != "failed"]
    if not made:
        raise RunFailed(f"no training round of the run's {spec.rounds} made a model")
    final = made[-1]
    if spec.distill is None:  # a distillation run's models stay at the silos: nothing to evaluate
        records.append(rounds.round(records[-1].round + 1, "evaluate"))
    return records, final
