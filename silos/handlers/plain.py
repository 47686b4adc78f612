"""Plain PyTorch rounds: train and submit the update in the clear; evaluate a model version."""

from __future__ import annotations

import time
from typing import Any

from prefect import get_run_logger
from prefect.runtime import flow_run

from schemas.tasks import EvaluateTask, TrainTask, TreeEvaluateTask
from schemas.wire import Metrics, MetricsReport
from silos.client_errors import BetweenBuffers
from silos.decline import Declined
from silos.flow_report import fmt_metrics
from silos.handlers.buffered import submit_ready
from silos.handlers.context import SiloContext
from silos.handlers.personalize import personalize_torch_round
from silos.handlers.registry import register
from silos.handlers.training import Trained, encode_update, fetch_global_model, run_training_round

RESEND_FIRST_S, RESEND_CAP_S = 0.2, 2.0


def submit_plain(ctx: SiloContext, work: TrainTask, trained: Trained) -> dict[str, Any]:
    """Encode the delta with its metadata and send it with the silo's signed statement.

    In an asynchronous run the update may land just after its buffer closed and before the
    coordinator opened the next (`BetweenBuffers`): it is sent again, unchanged, until the
    next buffer takes it (with its staleness), for at most the round deadline, so that a slow
    silo's training is not thrown away."""
    payload = encode_update(work.spec, work, trained)
    give_up = time.monotonic() + work.spec.round_deadline_s
    delay = RESEND_FIRST_S
    while True:
        try:
            return ctx.client.submit_update(work.run_id, work.round, payload)
        except BetweenBuffers:
            if time.monotonic() + delay > give_up:
                raise
            time.sleep(delay)  # the coordinator opens the next buffer as soon as it sees this
            delay = min(delay * 2, RESEND_CAP_S)


def train(ctx: SiloContext, work: TrainTask) -> dict[str, object] | Declined:
    """A plain training round (the service sees this silo's update); in an asynchronous
    secure run the update stays here until its buffer's cohort masks it (`buffered`)."""
    spec = work.spec
    if spec.asynchronous is not None and spec.secure_aggregation.enabled:
        return run_training_round(ctx, work, submit_ready)
    return run_training_round(ctx, work, submit_plain)


def report_evaluation(
    ctx: SiloContext, work: EvaluateTask | TreeEvaluateTask, metrics: Metrics
) -> Metrics:
    """Send the silo's metrics for model version `work.model_version` and log them."""
    report = MetricsReport(metrics=metrics, prefect_flow_run_id=str(flow_run.get_id() or ""))
    ctx.client.submit_evaluation(work.run_id, work.round, report)
    get_run_logger().info(
        "final model v%d on local holdout: %s", work.model_version, fmt_metrics(metrics)
    )
    return metrics


def evaluate_round(ctx: SiloContext, work: EvaluateTask) -> Metrics:
    """An evaluation round: score the global model on the local holdout and report it."""
    from silos.trainer import evaluate  # torch: loaded by the first PyTorch round only

    spec = work.spec
    params = fetch_global_model(ctx.client, spec, work.run_id, work.model_version)
    metrics = evaluate(spec.torch_model, params, ctx.data.X_test, ctx.data.y_test)
    personalize_torch_round(ctx, work, params)  # runs only when the spec asks for it
    return report_evaluation(ctx, work, metrics)


register("train", train, opens_round=True, trains=True)
register("evaluate", evaluate_round, opens_round=True)
