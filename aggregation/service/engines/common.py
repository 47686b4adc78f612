"""Steps several engines share: closing a round on answers sent in the clear, failing a round,
the metrics entry, refusing a step the mode does not take."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from typing import Any

import numpy as np

from aggregation.service.contributions import sat_out_reasons
from aggregation.service.engines.base import Answer, RoundContext
from aggregation.service.exceptions import Conflict
from aggregation.service.rounds import active_silos, contributions
from aggregation.service.tables import Contribution, utcnow
from schemas.metrics import weighted_metrics
from schemas.wire import Metrics

Aggregate = Callable[[RoundContext, list[Contribution]], None]


def close_with_answers(ctx: RoundContext, aggregate: Aggregate) -> None:
    """Close a round whose silos answered in the clear: `aggregate` the updates of a training
    round into the next model, or just close an evaluation round; fail the round when fewer
    than ``min_silos`` answered. Either way the silos' metrics go to the ledger."""
    rnd, spec = ctx.rnd, ctx.spec
    kind = "update" if rnd.kind == "train" else "evaluation"
    usable = [c for c in contributions(ctx.s, rnd.run_id, rnd.number) if c.kind == kind]
    if len(usable) < spec.min_silos:
        fail_round(
            ctx,
            f"round {rnd.number}: {len(usable)} silos answered, min_silos is {spec.min_silos} "
            f"(answered: {sorted(c.silo for c in usable) or 'none'})",
        )
        return
    if rnd.kind == "train":
        aggregate(ctx, usable)
        rnd.status = "aggregated"
    else:
        rnd.status = "closed"
    rnd.closed_at = utcnow()
    record_metrics(ctx, usable)


def answered(ctx: RoundContext, silo: str) -> bool:
    """Whether `silo` already answered this round (update, evaluation, refusal, sat out)."""
    return ctx.s.get(Contribution, (ctx.rnd.run_id, ctx.rnd.number, silo)) is not None


def awaited_default(ctx: RoundContext) -> set[str]:
    """Every active participant that has not answered the round (any contribution counts:
    an update, an evaluation, a sit-out, a decline)."""
    done = {c.silo for c in contributions(ctx.s, ctx.rnd.run_id, ctx.rnd.number)}
    return set(active_silos(ctx.s, ctx.rnd.run_id)) - done


def round_fields(ctx: RoundContext) -> dict[str, Any]:
    """What every round task carries: run, round, input model version, spec, statistics, and
    the coordinator's Prefect flow run."""
    rnd = ctx.rnd
    return {
        "run_id": rnd.run_id,
        "round": rnd.number,
        "model_version": rnd.input_model_version,
        "spec": ctx.spec,
        "stats": ctx.stats,
        "coordinator_flow_run_id": ctx.run.prefect_flow_run_id,
    }


def fail_round(ctx: RoundContext, reason: str) -> None:
    """Fail the round with `reason`, adding who sat it out and why; the ledger's
    ``round_failed`` entry says so (an asynchronous run goes on past a failed buffer, so the
    run's own end need not name it)."""
    rnd = ctx.rnd
    rnd.status = "failed"
    rnd.closed_at = utcnow()
    excused = sat_out_reasons(ctx.s, rnd.run_id, rnd.number)
    rnd.reason = f"{reason}; sat out: {excused}" if excused else reason
    entry = {"round": rnd.number, "kind": rnd.kind, "reason": rnd.reason}
    ctx.hub.recorder.service(ctx.s, "round_failed", entry, rnd.run_id)


def record_metrics(ctx: RoundContext, answered: list[Contribution]) -> None:
    """The ``metrics`` entry: each silo's evaluation of the round's input model, and the
    example-weighted mean (no entry when no silo reported metrics)."""
    per_silo = {c.silo: json.loads(c.metrics_json) for c in answered if c.metrics_json}
    if not per_silo:
        return
    ctx.hub.recorder.service(
        ctx.s,
        "metrics",
        {
            "round": ctx.rnd.number,
            "model_version": ctx.rnd.input_model_version,
            "per_silo": per_silo,
            "weighted": weighted_metrics(Metrics.model_validate(m) for m in per_silo.values()),
        },
        ctx.rnd.run_id,
    )


def contributors(updates: list[Contribution]) -> list[dict[str, object]]:
    """Who contributed to an aggregate, as the ledger's ``aggregate`` entry lists them."""
    return [{"silo": c.silo, "digest": c.digest, "n_examples": c.n_examples} for c in updates]


def digest_arrays(arrays: list[np.ndarray]) -> str:
    """sha256 over arrays as float32 bytes (the ledger's ``aggregate_digest``)."""
    h = hashlib.sha256()
    for a in arrays:
        h.update(np.ascontiguousarray(a, dtype=np.float32).tobytes())
    return h.hexdigest()


def refuse_step(ctx: RoundContext, answer: Answer, mode: str, instead: str) -> Conflict:
    """The Conflict for a step this mode does not take; `instead` says what to send."""
    return Conflict(
        f"round {ctx.rnd.number} of run {ctx.run.id} is a {mode} {ctx.rnd.kind} round: "
        f"silo {answer.silo!r} sent {answer.step!r}; {instead}"
    )
