"""Secure-aggregation rounds: advertise keys, share seeds, train and submit masked, sign the
survivor list (when the round runs the consistency check), unmask.

The protocol steps are `silos.secure_round`'s; these handlers run each stage (inside the
round's one Prefect task run, `silos.agent.serve_round`) and, for the masked stage, clip,
noise and weight the trained delta first.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
from prefect import get_run_logger

from schemas.tasks import (
    SecAggAdvertiseTask,
    SecAggBufferedTask,
    SecAggConsistencyTask,
    SecAggMaskedTask,
    SecAggShareTask,
    SecAggUnmaskTask,
)
from schemas.wire import Metrics
from silos import ledger_sync, privacy, secure_round
from silos.client_errors import AlreadyAnswered
from silos.decline import Declined
from silos.files import write_private
from silos.handlers.context import SiloContext
from silos.handlers.registry import register
from silos.handlers.training import Trained, report_privacy, run_training_round

BOOKKEEPING = ".masked.json"
"""Beside the round's saved masked message: its row count, training time and metrics."""


def advertised_count(ctx: SiloContext, work: SecAggAdvertiseTask) -> int:
    """The count this silo's masked update will carry (the service refuses a different one):
    an ensemble weight round's validation rows (its gradient is their mean; the service's
    `ensemble_mode`: a training round past version 0), else the training rows."""
    spec = work.spec
    if spec.ensemble is not None and work.model_version > 0:
        from silos.ensemble import split_validation  # torch, xgboost: only in this run

        _, (_, y_val) = split_validation(ctx.data, spec.ensemble.val_fraction, spec.training.seed)
        return len(y_val)
    return ctx.data.n_train


def advertise(ctx: SiloContext, work: SecAggAdvertiseTask) -> None:
    n_examples = advertised_count(ctx, work)
    secure_round.advertise(ctx.client, ctx.key, work, ctx.workspace, n_examples=n_examples)


def share(ctx: SiloContext, work: SecAggShareTask) -> None:
    secure_round.share(ctx.client, ctx.key, work, ctx.workspace)


def consistency(ctx: SiloContext, work: SecAggConsistencyTask) -> None:
    secure_round.consistency(ctx.client, ctx.key, work, ctx.workspace)


def unmask(ctx: SiloContext, work: SecAggUnmaskTask) -> None:
    secure_round.unmask(ctx.client, ctx.key, work, ctx.workspace)


def clip_and_noise(ctx: SiloContext, work: SecAggMaskedTask, trained: Trained) -> np.ndarray:
    """The flat delta clipped to the round's L2 bound, plus this silo's share of DP noise
    (counted in the privacy budget with the message it goes into, `send_masked`). The share is
    sized for the threshold, not the roster: the service unmasks a sum of as few as threshold
    silos, and that sum must still carry the whole noise."""
    flat = np.concatenate([d.ravel() for d in trained.delta]).astype(np.float64)
    dp = work.spec.privacy
    # under DP the round's quantizer range (secagg.clip) is wider than the L2 bound: it holds
    # the noise too (PrivacySpec.quantizer_clip)
    clipped = secure_round.clip_l2(flat, dp.clip_norm if dp is not None else work.secagg.clip)
    if dp is not None:
        clipped = clipped + privacy.gaussian_noise(dp, work.secagg.threshold, clipped.size)
    return clipped


def submit_masked(ctx: SiloContext, work: SecAggMaskedTask, trained: Trained) -> dict[str, Any]:
    """Clip, weight, quantize and mask the delta; the service only ever sees the sum. The
    round's message built before a restart is sent again as is: nothing is noised anew."""
    message = secure_round.saved_masked(ctx.workspace, work)
    if message is None:
        refusal = secure_round.weight_refusal(ctx.key, work, ctx.workspace)
        if refusal:  # a service that weights updates so as to isolate one: leave the run
            raise Declined("run", "policy", refusal)
        _keep_bookkeeping(ctx, work, trained)
        weight = work.secagg.weight if work.secagg.weight is not None else 1.0
        weighted = weight * clip_and_noise(ctx, work, trained)
        message = secure_round.masked_update(ctx.client, ctx.key, work, ctx.workspace, weighted)
    return send_masked(ctx, work, message, trained)


def send_masked(
    ctx: SiloContext, work: SecAggMaskedTask, message: bytes, trained: Trained
) -> dict[str, Any]:
    """Count `message` against the privacy budget (once), then send it."""
    # The budget counts each noised message that may leave the silo, exactly once: the message
    # is saved durably (masked_update) before it is counted, and counted durably before every
    # send. A crash before the save sends nothing (the noise was only in memory); after it, a
    # restart sends the same saved bytes, and counting them again changes nothing.
    dp = work.spec.privacy
    if dp is not None:
        privacy.record_round(ctx.config, work.run_id, dp, privacy.release_id(work.round, message))
    metrics = trained.metrics.model_dump_json()
    # a buffer's update signs the round it was trained for: its staleness is counted from it
    base = work.base_round if isinstance(work, SecAggBufferedTask) else None
    try:
        return ctx.client.submit_masked(
            work.run_id, work.round, message, trained.n_examples, trained.seconds, metrics, base
        )
    except AlreadyAnswered:  # a retry after a lost answer: the first submission stands
        return {"digest": "(sent earlier)", "duplicate": True, "receipt": None}


def _keep_bookkeeping(ctx: SiloContext, work: SecAggMaskedTask, trained: Trained) -> None:
    """What a resend of the round's message needs besides it (kept before it is built)."""
    metrics = trained.metrics.model_dump(mode="json")
    note = {"n_examples": trained.n_examples, "seconds": trained.seconds, "metrics": metrics}
    path = secure_round.round_file(ctx.workspace, work, BOOKKEEPING)
    write_private(path, json.dumps(note).encode())


def _sent_before(ctx: SiloContext, work: SecAggMaskedTask) -> tuple[bytes, Trained] | None:
    """The round's message built before a restart and its bookkeeping, when both are here.
    Without the bookkeeping the round trains again for it, and still sends the saved message."""
    message = secure_round.saved_masked(ctx.workspace, work)
    path = secure_round.round_file(ctx.workspace, work, BOOKKEEPING)
    if message is None or not path.exists():
        return None
    try:
        note = json.loads(path.read_text())
        metrics = Metrics.model_validate(note["metrics"])
        return message, Trained([], int(note["n_examples"]), float(note["seconds"]), metrics)
    except (ValueError, KeyError, TypeError):
        return None


def resend_masked(
    ctx: SiloContext, work: SecAggMaskedTask, message: bytes, trained: Trained
) -> dict[str, object]:
    """Send the round's saved message again (a restarted agent), without training anew."""
    answer = send_masked(ctx, work, message, trained)
    # answered "duplicate" (the first answer was lost): its receipt comes from the ledger
    ledger_sync.keep_answer(ctx.client, ctx.workspace, work.run_id, answer)
    report_privacy(ctx, work, answer)
    get_run_logger().info(
        "round %d: update masked before a restart sent again; %s accepted",
        work.round,
        str(answer["digest"])[:16],
    )
    return {
        "round": work.round,
        "digest": answer["digest"],
        "train_seconds": trained.seconds,
        "n_examples": trained.n_examples,
        "metrics": trained.metrics,
    }


def masked_train(ctx: SiloContext, work: SecAggMaskedTask) -> dict[str, object] | Declined:
    """A secure round's masked stage: train locally, then submit the update masked; after a
    restart the message already built for the round is sent again instead."""
    sent = _sent_before(ctx, work)
    if sent is not None:
        return resend_masked(ctx, work, *sent)
    return run_training_round(ctx, work, submit_masked)


register("secagg_advertise", advertise, opens_round=True)
register("secagg_share", share)
register("secagg_masked", masked_train, opens_round=True, trains=True)
register("secagg_consistency", consistency)
register("secagg_unmask", unmask)
