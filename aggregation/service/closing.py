"""Closing a round: aggregate a training round into the next global model, or close an
evaluation round. Runs in one transaction with the round row locked, so a crash at any point
leaves either the old state or the new one, and a retried call returns the stored result.
Its ledger entries (aggregate, model_saved, metrics) commit with it."""

from __future__ import annotations

import hashlib
import json

import numpy as np
from sqlalchemy.orm import Session

from aggregation.service import hist_rounds, secure_rounds
from aggregation.service.contributions import sat_out_reasons
from aggregation.service.exceptions import Conflict
from aggregation.service.lineage import Recorder
from aggregation.service.rounds import contributions, get_round
from aggregation.service.runs import get_model, get_run, spec_of
from aggregation.service.tables import Contribution, ModelVersion, Round, Run, utcnow
from aggregation.service.tree_rounds import close_tree_round
from aggregation.strategies import make_strategy
from aggregation.strategies.aggregate import weighted_mean
from schemas import tensors
from schemas.secagg.exceptions import InsufficientSharesError, ReconstructionError
from schemas.metrics import weighted_metrics
from schemas.specs import RunSpec, param_shapes
from schemas.wire import Metrics


def close_round(s: Session, run_id: str, number: int, recorder: Recorder) -> Round:
    """Aggregate (train round) or close (evaluation round). Idempotent."""
    rnd = get_round(s, run_id, number, for_update=True)
    if rnd.status != "open":
        return rnd
    run = get_run(s, run_id, for_update=True)
    spec = spec_of(run)
    if hist_rounds.is_hist_round(spec, rnd):
        # secure-hist closes its rounds itself; at the deadline silent silos drop out
        hist_rounds.close(s, run, rnd, recorder)
        return rnd
    if rnd.secagg_stage is not None:
        # the deadline passed: whoever has not answered this stage is a dropout
        advance_secure(s, run, rnd, spec, recorder, force=True)
        return rnd
    kind = "update" if rnd.kind == "train" else "evaluation"
    usable = [c for c in contributions(s, run_id, number) if c.kind == kind]
    if len(usable) < spec.min_silos:
        rnd.status = "failed"
        rnd.closed_at = utcnow()
        rnd.reason = (
            f"round {number}: {len(usable)} silos answered, min_silos is {spec.min_silos} "
            f"(answered: {sorted(c.silo for c in usable) or 'none'})"
        )
        excused = sat_out_reasons(s, run_id, number)
        if excused:
            rnd.reason += f"; sat out: {excused}"
        return rnd
    if rnd.kind == "train":
        if spec.trees is not None:
            close_tree_round(s, run, rnd, spec, usable, recorder)
        else:
            _aggregate(s, run, rnd, spec, usable, recorder)
        rnd.status = "aggregated"
    else:
        rnd.status = "closed"
    rnd.closed_at = utcnow()
    _record_metrics(s, rnd, usable, recorder)
    return rnd


def advance_secure(
    s: Session, run: Run, rnd: Round, spec: RunSpec, recorder: Recorder, *, force: bool
) -> None:
    """Move a secure round's protocol on; aggregate once unmasked, fail when it cannot be."""
    before = rnd.secagg_stage
    try:
        flat = secure_rounds.advance(s, run, rnd, spec, force=force)
    except (InsufficientSharesError, ReconstructionError) as exc:
        rnd.status = "failed"
        rnd.closed_at = utcnow()
        rnd.reason = f"secure aggregation: {exc}"
        excused = sat_out_reasons(s, run.id, rnd.number)
        if excused:
            rnd.reason += f"; sat out: {excused}"
        return
    if before == "masked" and rnd.secagg_stage == "unmask":
        survivors = {m.silo for m in secure_rounds.messages(s, rnd, "masked")}
        dropped = sorted({m.silo for m in secure_rounds.messages(s, rnd, "share")} - survivors)
        if dropped:
            recorder.service(s, "dropout", {"round": rnd.number, "silos": dropped}, run.id)
    if flat is None:
        return
    updates = [c for c in contributions(s, run.id, rnd.number) if c.kind == "update"]
    if rnd.kind == "statistics":
        _store_statistics(s, run, rnd, flat, updates, recorder)
        return
    flat = flat / secure_rounds.survivor_weight(s, rnd, spec)
    arrays, start = [], 0
    for _, shape in param_shapes(spec.torch_model):
        size = int(np.prod(shape))
        arrays.append(flat[start : start + size].reshape(shape).astype(np.float32))
        start += size
    senders = sorted(c.silo for c in updates)
    recovered = sorted({m.silo for m in secure_rounds.messages(s, rnd, "share")} - set(senders))
    if recovered:
        recorder.service(
            s,
            "recovery",
            {"round": rnd.number, "survivors": senders, "recovered": recovered},
            run.id,
        )
    _apply(s, run, rnd, spec, arrays, updates, recorder, secure=True)
    rnd.status = "aggregated"
    rnd.closed_at = utcnow()
    _record_metrics(s, rnd, updates, recorder)


def _store_statistics(
    s: Session,
    run: Run,
    rnd: Round,
    total: np.ndarray,
    updates: list[Contribution],
    recorder: Recorder,
) -> None:
    """Keep the federation's summed feature moments; every later task hands them to silos."""
    run.federation_stats = json.dumps([float(x) for x in total])
    recorder.service(
        s,
        "aggregate",
        {
            "round": rnd.number,
            "statistics": True,
            "contributors": [
                {"silo": c.silo, "digest": c.digest, "n_examples": c.n_examples} for c in updates
            ],
            "aggregate_digest": _digest_arrays([total.astype(np.float32)]),
            "secure_aggregation": True,
            "individual_updates_seen_by_service": False,
        },
        run.id,
    )
    rnd.status = "closed"
    rnd.closed_at = utcnow()


def _aggregate(
    s: Session, run: Run, rnd: Round, spec: RunSpec, updates: list[Contribution], recorder: Recorder
) -> None:
    shapes = param_shapes(spec.torch_model)
    deltas = [tensors.decode_expected(c.payload or b"", shapes)[0] for c in updates]
    mean_delta = weighted_mean(deltas, [c.n_examples or 0 for c in updates])
    _apply(s, run, rnd, spec, mean_delta, updates, recorder, secure=False)


def _apply(
    s: Session,
    run: Run,
    rnd: Round,
    spec: RunSpec,
    mean_delta: list[np.ndarray],
    updates: list[Contribution],
    recorder: Recorder,
    *,
    secure: bool,
) -> None:
    """The strategy's server step on the mean delta; the new model version and its entries."""
    shapes = param_shapes(spec.torch_model)
    current, _ = tensors.decode_expected(
        get_model(s, run.id, rnd.input_model_version).payload, shapes
    )
    state = tensors.decode(run.strategy_state)[0] if run.strategy_state else {}
    new_params, new_state = make_strategy(spec.strategy).apply(current, mean_delta, state)
    names = [n for n, _ in shapes]
    payload = tensors.encode(
        dict(zip(names, new_params, strict=True)),
        {
            "run_id": run.id,
            "version": str(rnd.number),
            "contributors": ",".join(c.silo for c in updates),
        },
    )
    if s.get(ModelVersion, (run.id, rnd.number)) is not None:
        raise Conflict(f"run {run.id} already has model version {rnd.number}")
    sha = tensors.digest(payload)
    s.add(ModelVersion(run_id=run.id, version=rnd.number, sha256=sha, payload=payload))
    run.strategy_state = tensors.encode(new_state) if new_state else None
    run.latest_model_version = rnd.number
    rnd.model_version = rnd.number
    recorder.service(
        s,
        "aggregate",
        {
            "round": rnd.number,
            "contributors": [
                {"silo": c.silo, "digest": c.digest, "n_examples": c.n_examples} for c in updates
            ],
            "aggregate_digest": _digest_arrays(mean_delta),
            "model_version": rnd.number,
            "strategy": spec.strategy.name,
            "secure_aggregation": secure,
            "individual_updates_seen_by_service": not secure,
        },
        run.id,
    )
    path = recorder.write_model(run.id, rnd.number, payload)
    recorder.service(
        s,
        "model_saved",
        {"round": rnd.number, "version": rnd.number, "sha256": sha, "path": path},
        run.id,
    )


def _digest_arrays(arrays: list[np.ndarray]) -> str:
    h = hashlib.sha256()
    for a in arrays:
        h.update(np.ascontiguousarray(a, dtype=np.float32).tobytes())
    return h.hexdigest()


def _record_metrics(
    s: Session, rnd: Round, answered: list[Contribution], recorder: Recorder
) -> None:
    per_silo = {c.silo: json.loads(c.metrics_json) for c in answered if c.metrics_json}
    if not per_silo:
        return
    recorder.service(
        s,
        "metrics",
        {
            "round": rnd.number,
            "model_version": rnd.input_model_version,
            "per_silo": per_silo,
            "weighted": weighted_metrics(Metrics.model_validate(m) for m in per_silo.values()),
        },
        rnd.run_id,
    )
