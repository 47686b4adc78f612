"""The steps of a PyTorch training round, shared by plain and secure rounds.

fetch the global model -> score it on the holdout -> check the privacy budget -> train ->
(clip, noise and mask: secure rounds only) -> build the update -> submit -> record privacy spent.
`run_training_round` calls them in order; the round's task type supplies the build-and-submit
step (`Submit`).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from prefect import get_run_logger
from prefect.runtime import flow_run

from schemas import tensors
from schemas.specs import RunSpec, param_shapes, update_shapes
from schemas.tasks import SecAggMaskedTask, TrainTask
from schemas.wire import Metrics
from silos import ledger_sync, personalize_state, privacy, scaffold
from silos.bench_delay import bench_delay
from silos.client import SiloClient
from silos.config import SiloConfig
from silos.decline import Declined
from silos.flow_report import fmt_metrics
from silos.handlers.context import SiloContext
from silos.lineage_copy import keep_receipt, load_records

W = TypeVar("W", TrainTask, SecAggMaskedTask)


@dataclass(frozen=True)
class Trained:
    """What local training produced: the delta from the input model (under SCAFFOLD followed by
    the control-variate delta) and its bookkeeping."""

    delta: list[np.ndarray]
    n_examples: int
    seconds: float
    metrics: Metrics  # the input model on the silo's holdout


Submit = Callable[[SiloContext, W, Trained], dict[str, Any]]
"""Build the round's update from `Trained` and send it; returns the service's answer."""


def fetch_global_model(
    client: SiloClient, spec: RunSpec, run_id: str, version: int
) -> list[np.ndarray]:
    """The run's global model `version`, checked against the spec's parameter shapes."""
    payload = client.download_model(run_id, version)
    params, _ = tensors.decode_expected(payload, param_shapes(spec.torch_model))
    return params


def noise_range_refusal(work: TrainTask | SecAggMaskedTask) -> str | None:
    """Why the round's quantizer would clamp this silo's DP noise, or None: a service from
    before the range held the noise (`PrivacySpec.quantizer_clip`) would release a sum with
    less noise than the epsilon is counted for."""
    dp = work.spec.privacy
    if dp is None or not isinstance(work, SecAggMaskedTask):
        return None
    need = dp.quantizer_clip(work.secagg.threshold)
    if work.secagg.clip >= need:
        return None
    return (
        f"round {work.round}: the service quantizes each coordinate into "
        f"[-{work.secagg.clip:g}, {work.secagg.clip:g}], which would clamp this silo's DP noise "
        f"(it needs {need:.4g} at threshold {work.secagg.threshold}); upgrade the service"
    )


def privacy_refusal(config: SiloConfig, work: TrainTask | SecAggMaskedTask) -> str | None:
    """Why this round would break the silo's DP budget (policy max_epsilon), or None."""
    config_max = config.policy.max_epsilon
    if config_max is None or work.spec.privacy is None:
        return None
    after = privacy.epsilon_if(config, work.run_id, work.spec.privacy, 1)
    if after > config_max:
        return (
            f"round {work.round} would bring this silo's epsilon to {after:.2f} "
            f"(delta {privacy.budget_delta(config, work.spec.privacy):g}); its policy allows "
            f"at most {config_max:g}"
        )
    return None


def train_delta(
    ctx: SiloContext, work: TrainTask | SecAggMaskedTask, params: list[np.ndarray], metrics: Metrics
) -> Trained:
    """Train from `params` on the silo's rows (seed: the run's plus the round; learning rate
    by the spec's schedule)."""
    spec = work.spec
    mu = spec.strategy.mu if spec.strategy.name == "fedprox" else 0.0
    training = spec.training.for_round(work.round, spec.rounds)  # seed + round, scheduled lr
    data = ctx.data
    from silos.trainer import train_local  # torch: loaded by the first PyTorch round only

    if spec.strategy.name == "scaffold":
        return _scaffold_delta(ctx, work, params, metrics)
    start = personalize_state.start_params(ctx.workspace, spec, work.run_id, params)  # FedPer
    result = train_local(spec.torch_model, start, data.X_train, data.y_train, training, mu=mu)
    delta = [(new - old).astype(np.float32) for new, old in zip(result.params, start, strict=True)]
    delta = personalize_state.keep_head_local(
        ctx.workspace, spec, work.run_id, result.params, delta
    )
    seconds = result.seconds + bench_delay()  # 0 outside bench/async_rounds.py
    return Trained(delta, result.n_examples, seconds, metrics)


def _scaffold_delta(
    ctx: SiloContext, work: TrainTask | SecAggMaskedTask, params: list[np.ndarray], metrics: Metrics
) -> Trained:
    """SCAFFOLD's local round (`silos.scaffold`): corrected by the service's c for this model
    version and the silo's own c_i; the update is the model delta then the control delta."""
    spec, model = work.spec, work.spec.torch_model
    payload = ctx.client.download_control(work.run_id, work.model_version)
    c, _ = tensors.decode_expected(payload, param_shapes(model))
    c_i = scaffold.load_control(ctx.workspace, work.run_id, work.round, model)
    training = spec.training.for_round(work.round, spec.rounds)
    data = ctx.data
    step = scaffold.corrected_training(model, params, data.X_train, data.y_train, training, c, c_i)
    scaffold.save_control(ctx.workspace, work.run_id, work.round, model, step.control)
    delta = [(new - old).astype(np.float32) for new, old in zip(step.params, params, strict=True)]
    seconds = step.seconds + bench_delay()
    return Trained(delta + step.control_delta, step.n_examples, seconds, metrics)


def encode_update(spec: RunSpec, work: TrainTask, trained: Trained) -> bytes:
    """The plain update payload: the delta (and SCAFFOLD's control delta, `update_shapes`)
    plus metadata binding it to this run and round."""
    names = [n for n, _ in update_shapes(spec)]
    return tensors.encode(
        dict(zip(names, trained.delta, strict=True)),
        {
            "run_id": work.run_id,
            "round": str(work.round),
            "n_examples": str(trained.n_examples),
            "train_seconds": f"{trained.seconds:.6f}",
            "metrics": trained.metrics.model_dump_json(),
            "prefect_flow_run_id": str(flow_run.get_id() or ""),
        },
    )


def report_privacy(
    ctx: SiloContext, work: TrainTask | SecAggMaskedTask, answer: dict[str, Any]
) -> None:
    """Tell the ledger the epsilon spent so far (once per accepted update, under DP only).
    A duplicate answer means the first one was lost (a retry, or a restart's resend): the
    statement is sent then unless the silo's own copy of its lineage holds it, once the copy
    got the run's receipts it lacked from the ledger (`ledger_sync.keep_answer`)."""
    dp = work.spec.privacy
    if dp is None:
        return
    if not (answer.get("duplicate") and _reported(ctx.workspace, work)):
        payload = ledger_sync.privacy_payload(ctx.config, ctx.silo, work.run_id, work.round, dp)
        answer = ctx.client.submit_statement(work.run_id, "privacy_spent", payload)
        keep_receipt(ctx.workspace, answer)
        get_run_logger().info(
            "round %d: epsilon spent in this run %.4g, by this silo in all its runs %.4g "
            "(delta %g)",
            work.round,
            payload["run_epsilon"],
            payload["epsilon"],
            dp.delta,
        )
    # an earlier round's statement the agent's start could not send without the run's spec
    ledger_sync.catch_up_privacy(ctx.client, ctx.config, work.run_id, dp)


def _reported(workspace: Path, work: TrainTask | SecAggMaskedTask) -> bool:
    """Whether this silo's copy of its lineage holds its privacy_spent of the task's round."""
    for record in load_records(workspace):
        st = record.statement
        if st.kind == "privacy_spent" and st.run_id == work.run_id:
            if json.loads(st.payload).get("round") == work.round:
                return True
    return False


def run_training_round(
    ctx: SiloContext, work: W, submit: Submit[W]
) -> dict[str, object] | Declined:
    """One training round: fetch the global model, score it on the holdout, train, submit.

    It runs inside the round's one Prefect task run (`silos.agent.serve_round`); each step is
    logged there. A round the silo's privacy budget cannot
    pay for is returned as its `Declined` (the agent sends it; a raised error would cost a
    traceback in the log every round).
    """
    from silos.trainer import evaluate  # torch: loaded by the first PyTorch round only

    logger = get_run_logger()
    params = fetch_global_model(ctx.client, work.spec, work.run_id, work.model_version)
    metrics = evaluate(work.spec.torch_model, params, ctx.data.X_test, ctx.data.y_test)
    logger.info(
        "round %d: model v%d on local holdout: %s",
        work.round,
        work.model_version,
        fmt_metrics(metrics),
    )
    clamped = noise_range_refusal(work)
    if clamped:  # the service's range is the run's: every later round would clamp too
        return Declined("run", "policy", clamped)
    if work.spec.privacy is not None:
        changed = privacy.sigma_changed(ctx.config, work.run_id, work.spec.privacy)
        if changed:
            return Declined("run", "policy", changed)
    refusal = privacy_refusal(ctx.config, work)
    if refusal:  # the budget only shrinks: the rest of the run is out of reach too
        return Declined("run", "privacy_budget", refusal)
    trained = train_delta(ctx, work, params, metrics)
    answer = submit(ctx, work, trained)
    ledger_sync.keep_answer(ctx.client, ctx.workspace, work.run_id, answer)
    report_privacy(ctx, work, answer)
    digest = answer["digest"]
    logger.info(
        "round %d: trained on %d rows in %.3fs; update %s accepted",
        work.round,
        trained.n_examples,
        trained.seconds,
        str(digest)[:16],
    )
    return {
        "round": work.round,
        "digest": digest,
        "train_seconds": trained.seconds,
        "n_examples": trained.n_examples,
        "metrics": trained.metrics,
    }
