"""Asynchronous secure buffers at the silo: train and announce ready; mask the kept update
when the buffer's cohort reaches the masked stage.

The training step is the plain round's (`run_training_round`) with another submit: the delta
stays at the silo (`silos.buffered_update`) and only "ready, n examples" goes out. The
cohort's other stages (advertise, share, consistency, unmask) are the synchronous handlers'.
"""

from __future__ import annotations

from typing import Any

from prefect import get_run_logger

from schemas.tasks import SecAggBufferedTask, TrainTask
from silos import buffered_update
from silos.handlers.context import SiloContext
from silos.handlers.registry import register
from silos.handlers.secagg import submit_masked
from silos.handlers.training import Trained
from silos.lineage_copy import keep_receipt


def submit_ready(ctx: SiloContext, work: TrainTask, trained: Trained) -> dict[str, Any]:
    """Keep the trained update at the silo and announce that it is ready."""
    kept = buffered_update.Kept(trained.delta, trained.n_examples, trained.seconds, trained.metrics)
    digest = buffered_update.keep(ctx.workspace, work.run_id, work.round, work.spec, kept)
    answer = ctx.client.announce_ready(work.run_id, work.round, trained.n_examples)
    get_run_logger().info(
        "round %d: update kept at the silo; ready for buffer %s (in its cohort: %s)",
        work.round,
        answer.get("buffer"),
        answer.get("cohort"),
    )
    return {"digest": digest, "duplicate": bool(answer.get("duplicate")), "receipt": None}


def buffered_masked(ctx: SiloContext, work: SecAggBufferedTask) -> dict[str, Any]:
    """The cohort's masked stage: clip, weight (n_k / N times the staleness weight), quantize
    and mask the update kept since round `work.base_round`; then forget it."""
    kept = buffered_update.load(ctx.workspace, work.run_id, work.base_round, work.spec)
    trained = Trained(kept.delta, kept.n_examples, kept.seconds, kept.metrics)
    answer = submit_masked(ctx, work, trained)
    keep_receipt(ctx.workspace, answer)
    buffered_update.forget(ctx.workspace, work.run_id)
    get_run_logger().info(
        "buffer %d: update of round %d (staleness %d, weight %.4g) sent masked",
        work.round,
        work.base_round,
        work.staleness,
        work.secagg.weight or 0.0,
    )
    return {"round": work.round, "digest": answer.get("digest")}


register("secagg_buffered", buffered_masked)
