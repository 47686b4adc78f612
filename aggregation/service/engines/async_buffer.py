"""Asynchronous (buffered) training rounds: FedBuff (Nguyen et al. 2022) on the round machinery.

A run with ``RunSpec.asynchronous`` treats each training round as a buffer of updates:

- the coordinator opens round R as usual; its input model is the latest version v_R, and every
  silo that polls gets a `TrainTask` for it (the silos' code is the synchronous one);
- a silo's update answers the round it was asked for, r, so its base version is v_r. While r
  is open it goes into r's buffer (staleness 0). A slow silo's update arrives after r closed:
  the service files it into the buffer open now, R, with staleness t = v_R - v_r, and records
  the silo's signed statement for round r (what it signed);
- as soon as `buffer_size` (K) updates with t <= `max_staleness` are in, the service closes
  the buffer in the same transaction: new model = strategy(current, sum_k n_k s(t_k) d_k /
  sum_k n_k) with s(t) = 1/sqrt(1+t) (or 1): a stale update counts less, and the
  normalisation by examples alone keeps that discount (weights that renormalise would
  cancel it). Updates beyond `max_staleness` (when the run sets one; no cap by default) stay
  in the buffer but are not applied: the ledger's ``aggregate`` entry lists them under
  ``dropped_stale``;
- the ``aggregate`` entry lists every applied update with its base round, base version,
  staleness and weight. Metrics go to the ledger only from updates with t = 0 (they scored
  exactly the buffer's input model).

The round row is locked before an update is filed, so of two concurrent K-th updates exactly
one closes the buffer and the other joins the next. This engine runs buffers without secure
aggregation (the service sees each update, as in plain rounds); with it, `async_secure` runs
each buffer as a secure-aggregation cohort of K ready silos.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from sqlalchemy import Select, select
from sqlalchemy.orm import Session

from aggregation.service import contributions as crud
from aggregation.service.engines.base import AfterCommit, Answer, RoundContext
from aggregation.service.engines.common import (
    answered,
    awaited_default,
    fail_round,
    record_metrics,
    refuse_step,
    round_fields,
)
from aggregation.service.engines.plain import NonFiniteModel, apply_strategy
from aggregation.service.exceptions import (
    AlreadyAnswered,
    BetweenBuffers,
    Conflict,
    InvalidPayload,
)
from aggregation.service.rounds import contributions, get_round
from aggregation.service.runs import get_run, spec_of
from aggregation.service.statements import record_silo_statement, summarize_rejections
from aggregation.service.tables import Contribution, Round, Run, utcnow
from schemas import tensors
from schemas.signing import update_statement_payload
from schemas.specs import AsyncSpec, param_shapes
from schemas.tasks import Task, TrainTask


def staleness_weight(spec: AsyncSpec, staleness: int) -> float:
    """s(t): 1/sqrt(1+t) for ``sqrt``, 1 for ``constant``."""
    return 1.0 / math.sqrt(1.0 + staleness) if spec.staleness_weight == "sqrt" else 1.0


class AsyncEngine:
    """Buffered asynchronous training rounds (see the module docstring)."""

    def start(self, ctx: RoundContext, deadline_s: float) -> AfterCommit | None:
        return None

    def task_for(self, ctx: RoundContext, silo: str) -> Task | None:
        return None if answered(ctx, silo) else TrainTask(**round_fields(ctx))

    def receive(self, ctx: RoundContext, answer: Answer) -> dict[str, object]:
        if answer.step != "update":
            raise refuse_step(ctx, answer, "asynchronous", "send a tensor update to .../update")
        s, asked = ctx.s, ctx.rnd.number
        # run, then the buffer open now (every writer's lock order): the update joins the
        # buffer and may be the one that closes it; concurrent updates queue here
        run: Run = _locked(s, select(Run).where(Run.id == ctx.run.id), f"run {ctx.run.id}")
        buffer: Round = _locked(
            s,
            select(Round).where(Round.run_id == run.id, Round.number == run.current_round),
            f"round {run.current_round} of run {run.id}",
        )
        sent = _sent_before(s, run.id, answer.silo, tensors.digest(answer.body))
        if sent is not None:  # a retry after a lost answer, in whichever buffer it went
            return {"digest": sent.digest, "duplicate": True, "receipt": None, "buffer": sent.round}
        closed = buffer.status in ("aggregated", "failed")
        if buffer.kind == "train" and closed and run.status == "running":
            # the coordinator opens the next buffer as soon as it sees this one closed (a failed
            # one too: the next starts from the last model): a slow silo's update arriving in
            # between would otherwise be lost with its training
            raise BetweenBuffers(
                f"round {asked} of run {run.id}: buffer {buffer.number} has just closed "
                f"({buffer.status}) and the "
                f"next is not open yet: silo {answer.silo!r}, send the same update again; it "
                f"will join the next buffer with its staleness"
            )
        if buffer.kind != "train" or buffer.status != "open":
            raise Conflict(
                f"round {asked} of run {run.id} is {ctx.rnd.status} and the run's current round "
                f"{buffer.number} is a {buffer.status} {buffer.kind} round: silo "
                f"{answer.silo!r}'s update has no buffer to join"
            )
        c, created = _store(s, run.id, asked, buffer, answer.silo, answer.body)
        result = _statement(ctx, answer, asked, c, created)
        if created:
            spec = ctx.spec.asynchronous
            assert spec is not None  # mode_of routes only asynchronous runs here
            usable, _ = split_by_staleness(s, buffer, contributions(s, run.id, buffer.number))
            if len(usable) >= spec.buffer_size:  # what closing.close_round does, R locked
                closing = RoundContext(s, run, buffer, ctx.spec, ctx.hub)
                self.close(closing)
                summarize_rejections(s, ctx.hub.recorder, buffer)
                ctx.hub.recorder.checkpoint_round(s, buffer)
        result["buffer"] = buffer.number
        return result

    def advance(self, ctx: RoundContext, *, force: bool) -> None:
        return None  # a buffer closes on its K-th update, or at the coordinator's deadline

    def close(self, ctx: RoundContext) -> None:
        """Aggregate the buffer's usable updates (at the K-th one, or at the deadline)."""
        rnd, spec = ctx.rnd, ctx.spec
        updates = [c for c in contributions(ctx.s, rnd.run_id, rnd.number) if c.kind == "update"]
        usable, dropped = split_by_staleness(ctx.s, rnd, updates)
        if len(usable) < spec.min_silos:
            fail_round(
                ctx,
                f"buffer {rnd.number}: {len(usable)} usable updates, min_silos is "
                f"{spec.min_silos} (dropped as too stale: {sorted(dropped) or 'none'})",
            )
            return
        try:
            aggregate(ctx, usable, dropped)
        except NonFiniteModel as exc:  # nothing stored: fail the buffer, the run goes on
            fail_round(ctx, exc.detail)
            return
        rnd.status = "aggregated"
        rnd.closed_at = utcnow()
        record_metrics(ctx, [c for c, info in usable if info["staleness"] == 0])

    def awaited(self, ctx: RoundContext) -> set[str]:
        return awaited_default(ctx)


Usable = list[tuple[Contribution, dict[str, object]]]


def split_by_staleness(
    s: Session, buffer: Round, updates: list[Contribution]
) -> tuple[Usable, dict[str, int]]:
    """The buffer's updates with staleness <= max (each with its base round, base version,
    staleness), and the too-stale ones (silo -> staleness)."""
    spec = spec_of(get_run(s, buffer.run_id)).asynchronous
    assert spec is not None
    usable: Usable = []
    dropped: dict[str, int] = {}
    for c in updates:
        if c.kind != "update":
            continue
        base_round = int(tensors.read_metadata(c.payload or b"")["round"])
        base_version = get_round(s, buffer.run_id, base_round).input_model_version
        staleness = buffer.input_model_version - base_version
        if spec.max_staleness is not None and staleness > spec.max_staleness:
            dropped[c.silo] = staleness
            continue
        info: dict[str, object] = {
            "base_round": base_round,
            "base_version": base_version,
            "staleness": staleness,
            "weight": staleness_weight(spec, staleness),
        }
        usable.append((c, info))
    return usable, dropped


def aggregate(ctx: RoundContext, usable: Usable, dropped: dict[str, int]) -> None:
    """sum_k n_k s(t_k) d_k / sum_k n_k through the run's strategy, and its ledger entry."""
    shapes = param_shapes(ctx.spec.torch_model)
    total = float(sum(c.n_examples or 0 for c, _ in usable))
    mean = [np.zeros(shape, dtype=np.float64) for _, shape in shapes]
    for c, info in usable:
        delta = tensors.decode_expected(c.payload or b"", shapes)[0]
        w = (c.n_examples or 0) * float(info["weight"]) / total  # type: ignore[arg-type]
        for acc, d in zip(mean, delta, strict=True):
            acc += w * d
    spec = ctx.spec.asynchronous
    assert spec is not None
    listed = [
        {"silo": c.silo, "digest": c.digest, "n_examples": c.n_examples, **info}
        for c, info in usable
    ]
    extra: dict[str, object] = {
        "contributors": listed,
        "asynchronous": {
            "buffer_size": spec.buffer_size,
            "max_staleness": spec.max_staleness,
            "staleness_weight": spec.staleness_weight,
        },
        "dropped_stale": [{"silo": k, "staleness": v} for k, v in sorted(dropped.items())],
    }
    updates = [c for c, _ in usable]
    apply_strategy(ctx, [m.astype(np.float32) for m in mean], updates, secure=False, extra=extra)


def _locked(s: Session, stmt: Select[Any], what: str) -> Any:
    """The row `stmt` selects, locked and re-read (another transaction may have changed it
    since this one first read it)."""
    row = s.scalar(stmt.with_for_update().execution_options(populate_existing=True))
    if row is None:
        raise Conflict(f"{what} does not exist")
    return row


def _sent_before(s: Session, run_id: str, silo: str, digest: str) -> Contribution | None:
    """The silo's stored update with this digest in any buffer of the run, if any."""
    stmt = select(Contribution).where(
        Contribution.run_id == run_id, Contribution.silo == silo, Contribution.digest == digest
    )
    return s.scalars(stmt).first()


def _store(
    s: Session, run_id: str, asked: int, buffer: Round, silo: str, payload: bytes
) -> tuple[Contribution, bool]:
    """Check and file the update for round `asked` into `buffer` (one row per silo and
    buffer). A different update already in either round is refused."""
    digest = tensors.digest(payload)
    for number in dict.fromkeys((asked, buffer.number)):
        existing = s.get(Contribution, (run_id, number, silo))
        if existing is None:
            continue
        if existing.digest == digest:
            return existing, False
        raise AlreadyAnswered(
            f"silo {silo!r} already answered round {number} of run {run_id} ({existing.kind}); "
            f"its update for round {asked} cannot join buffer {buffer.number} too"
        )
    crud.open_round_for(s, run_id, buffer.number, silo, "train")
    spec = spec_of(get_run(s, run_id))
    shapes = param_shapes(spec.torch_model)
    c = crud.add_update(s, run_id, silo, payload, digest, shapes, asked=asked, filed=buffer.number)
    return c, True


def _statement(
    ctx: RoundContext, answer: Answer, asked: int, c: Contribution, created: bool
) -> dict[str, object]:
    """The silo's signed ``update_accepted`` statement, for the round it answered."""
    if not created:
        return {"digest": c.digest, "duplicate": True, "receipt": None}
    if not answer.statement_signature:
        raise InvalidPayload(
            f"update from silo {answer.silo!r} for round {asked} lacks its signed ledger statement"
        )
    payload = update_statement_payload(answer.silo, asked, c.digest or "", c.n_examples or 0)
    receipt = record_silo_statement(
        ctx.s,
        ctx.hub.recorder,
        answer.federation,
        answer.silo,
        ctx.run.id,
        "update_accepted",
        payload,
        answer.statement_signature,
    )
    return {"digest": c.digest, "duplicate": False, "receipt": receipt}
