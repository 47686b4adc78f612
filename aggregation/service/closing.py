"""Closing a round: aggregate a training round into the next global model, or close an
evaluation round. Runs in one transaction with the round row locked, so a crash at any point
leaves either the old state or the new one, and a retried call returns the stored result."""

from __future__ import annotations

from sqlalchemy.orm import Session

from aggregation.service.exceptions import Conflict
from aggregation.service.rounds import contributions, get_round
from aggregation.service.runs import get_model, get_run, spec_of
from aggregation.service.tables import ModelVersion, Round, utcnow
from aggregation.strategies import make_strategy
from aggregation.strategies.aggregate import weighted_mean
from schemas import tensors
from schemas.specs import param_shapes


def close_round(s: Session, run_id: str, number: int) -> Round:
    """Aggregate (train round) or close (evaluation round). Idempotent."""
    rnd = get_round(s, run_id, number, for_update=True)
    if rnd.status != "open":
        return rnd
    run = get_run(s, run_id, for_update=True)
    spec = spec_of(run)
    answered = contributions(s, run_id, number)
    kind = "update" if rnd.kind == "train" else "evaluation"
    usable = [c for c in answered if c.kind == kind]
    if len(usable) < spec.min_silos:
        rnd.status = "failed"
        rnd.closed_at = utcnow()
        rnd.reason = (
            f"round {number}: {len(usable)} silos answered, min_silos is {spec.min_silos} "
            f"(answered: {sorted(c.silo for c in usable) or 'none'})"
        )
        return rnd
    if rnd.kind == "train":
        _aggregate(s, run, rnd, spec, usable)
        rnd.status = "aggregated"
    else:
        rnd.status = "closed"
    rnd.closed_at = utcnow()
    return rnd


def _aggregate(s, run, rnd, spec, updates) -> None:  # type: ignore[no-untyped-def]
    shapes = param_shapes(spec.model)
    current, _ = tensors.decode_expected(
        get_model(s, run.id, rnd.input_model_version).payload, shapes
    )
    deltas = [tensors.decode_expected(c.payload, shapes)[0] for c in updates]
    mean_delta = weighted_mean(deltas, [c.n_examples for c in updates])
    state = tensors.decode(run.strategy_state)[0] if run.strategy_state else {}
    new_params, new_state = make_strategy(spec.strategy).apply(current, mean_delta, state)
    payload = tensors.encode(
        dict(zip([n for n, _ in shapes], new_params, strict=True)),
        {
            "run_id": run.id,
            "version": str(rnd.number),
            "contributors": ",".join(c.silo for c in updates),
        },
    )
    if s.get(ModelVersion, (run.id, rnd.number)) is not None:
        raise Conflict(f"run {run.id} already has model version {rnd.number}")
    s.add(
        ModelVersion(
            run_id=run.id, version=rnd.number, sha256=tensors.digest(payload), payload=payload
        )
    )
    run.strategy_state = tensors.encode(new_state) if new_state else None
    run.latest_model_version = rnd.number
    rnd.model_version = rnd.number
