"""Secure-aggregation rounds: advertise keys, share seeds, train and submit masked, sign the
survivor list (when the round runs the consistency check), unmask.

The protocol steps are `silos.secure_round`'s; these handlers run each stage (inside the
round's one Prefect task run, `silos.agent.serve_round`) and, for the masked stage, clip,
noise and weight the trained delta first.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from schemas.tasks import (
    SecAggAdvertiseTask,
    SecAggBufferedTask,
    SecAggConsistencyTask,
    SecAggMaskedTask,
    SecAggShareTask,
    SecAggUnmaskTask,
)
from silos import privacy, secure_round
from silos.client_errors import AlreadyAnswered
from silos.decline import Declined
from silos.handlers.context import SiloContext
from silos.handlers.registry import register
from silos.handlers.training import Trained, run_training_round


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
    """The flat delta clipped to the round's L2 bound, plus this silo's share of DP noise."""
    flat = np.concatenate([d.ravel() for d in trained.delta]).astype(np.float64)
    clipped = secure_round.clip_l2(flat, work.secagg.clip)
    dp = work.spec.privacy
    if dp is not None:
        clipped = clipped + privacy.gaussian_noise(dp, len(work.secagg.roster), clipped.size)
        privacy.record_round(ctx.config, work.run_id, dp)
    return clipped


def submit_masked(ctx: SiloContext, work: SecAggMaskedTask, trained: Trained) -> dict[str, Any]:
    """Clip, weight, quantize and mask the delta; the service only ever sees the sum."""
    weight = work.secagg.weight if work.secagg.weight is not None else 1.0
    weighted = weight * clip_and_noise(ctx, work, trained)
    message = secure_round.masked_update(ctx.client, ctx.key, work, ctx.workspace, weighted)
    metrics = trained.metrics.model_dump_json()
    # a buffer's update signs the round it was trained for: its staleness is counted from it
    base = work.base_round if isinstance(work, SecAggBufferedTask) else None
    try:
        return ctx.client.submit_masked(
            work.run_id, work.round, message, trained.n_examples, trained.seconds, metrics, base
        )
    except AlreadyAnswered:  # a retry after a lost answer: the first submission stands
        return {"digest": "(sent earlier)", "duplicate": True, "receipt": None}


def masked_train(ctx: SiloContext, work: SecAggMaskedTask) -> dict[str, object] | Declined:
    """A secure round's masked stage: train locally, then submit the update masked."""
    return run_training_round(ctx, work, submit_masked)


register("secagg_advertise", advertise, opens_round=True)
register("secagg_share", share)
register("secagg_masked", masked_train, opens_round=True, trains=True)
register("secagg_consistency", consistency)
register("secagg_unmask", unmask)
