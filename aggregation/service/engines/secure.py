"""Secure aggregation rounds of a PyTorch run: the service relays, checks, sums and unmasks.

The protocol (advertise -> share -> masked -> consistency -> unmask,
`aggregation/secagg/README.md`; the consistency stage when the round runs the check) and its
database mailbox are `secure_rounds`; this engine hands silos their stage's task, takes their
messages, moves the stages on and turns the unmasked sum into the next model. The statistics
engine (`engines.statistics`) is this engine with another task type and another use of the sum.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import numpy as np
from pydantic import ValidationError

from aggregation.secagg.server import close_advertise, unmask_requests
from aggregation.service import secure_rounds
from aggregation.service.contributions import check_n_examples
from aggregation.service.engines import plain
from aggregation.service.engines.base import AfterCommit, Answer, RoundContext
from aggregation.service.engines.common import (
    awaited_default,
    fail_round,
    record_metrics,
    refuse_step,
    round_fields,
)
from aggregation.service.exceptions import AlreadyAnswered, Conflict, Forbidden, InvalidPayload
from aggregation.service.rounds import contributions
from aggregation.service.statements import accept_statement
from aggregation.service.tables import Contribution, utcnow
from aggregation.service.wakeup import answers_only
from schemas import tensors
from schemas.secagg.config import RoundConfig
from schemas.secagg.exceptions import SecAggConfigError, SecAggError
from schemas.signing import STATEMENT_HEADER
from schemas.specs import update_shapes
from schemas.tasks import (
    DistillTask,
    EnsembleWeightsTask,
    SecAggAdvertiseTask,
    SecAggConsistencyTask,
    SecAggInfo,
    SecAggMaskedTask,
    SecAggShareTask,
    SecAggUnmaskTask,
    StatisticsTask,
    Task,
)
from schemas.wire import Metrics, SecAggStage

_TASKS: dict[str, type[SecAggAdvertiseTask | SecAggShareTask | SecAggUnmaskTask]] = {
    "advertise": SecAggAdvertiseTask,
    "share": SecAggShareTask,
    "unmask": SecAggUnmaskTask,
}
MESSAGE_STEPS = ("advertise", "share", "consistency", "unmask")
STEP_PREFIX = "secagg/"  # Answer.step of the secure-aggregation routes: secagg/<stage>


class SecureEngine:
    """Masked updates, summed and unmasked by the service (see the module docstring)."""

    masked_task: ClassVar[
        type[SecAggMaskedTask | StatisticsTask | DistillTask | EnsembleWeightsTask]
    ] = SecAggMaskedTask
    # whether a masked update's metrics are kept (the round's ``metrics`` entry): not where
    # they are of rows the threat model keeps at the silo (an ensemble's validation slice)
    keeps_metrics: ClassVar[bool] = True

    def start(self, ctx: RoundContext, deadline_s: float) -> AfterCommit | None:
        fresh = ctx.rnd.secagg_stage is None and not contributions(
            ctx.s, ctx.run.id, ctx.rnd.number
        )
        if fresh:
            check = secure_rounds.consistency_default(ctx.spec, ctx.hub.settings)
            secure_rounds.start(ctx.s, ctx.rnd, ctx.run.id, consistency_check=check)
            roster = secure_rounds.roster(ctx.rnd)
            unmet = secure_rounds.threshold_unmet(ctx.rnd, ctx.spec)
            if len(roster) < 2:  # the others refused the run: masks need a second silo
                active = ", ".join(roster) or "none"
                fail_round(
                    ctx,
                    f"round {ctx.rnd.number} of run {ctx.run.id}: secure aggregation needs at "
                    f"least 2 active silos, the run has {len(roster)} ({active})",
                )
            elif unmet is not None:  # silos left since the run was created with enough
                fail_round(ctx, unmet)
        return None

    def task_for(self, ctx: RoundContext, silo: str) -> Task | None:
        s, rnd, spec = ctx.s, ctx.rnd, ctx.spec
        stage = rnd.secagg_stage or "advertise"
        if not secure_rounds.awaits(s, rnd, stage, silo):
            return None
        try:
            cfg = secure_rounds.config(rnd, spec)
        except SecAggConfigError as exc:  # e.g. a roster of one, from before `start` failed it
            fail_round(ctx, f"round {rnd.number} of run {ctx.run.id} cannot run: {exc}")
            return None
        weight = secure_rounds.weight_of(s, rnd, spec, silo) if stage != "advertise" else None
        keys = secure_rounds.roster_keys(s, ctx.run, rnd, neighbourhood(cfg, silo))
        info = SecAggInfo(
            stage=SecAggStage(stage),
            roster=list(cfg.silos),
            roster_keys={k: v.hex() for k, v in keys.items()},
            threshold=cfg.threshold,
            dim=cfg.dim,
            bits=cfg.bits,
            degree=cfg.degree,
            consistency_check=cfg.consistency_check,
            clip=secure_rounds.quantizer(rnd, spec).clip,
            weight=weight,
        )
        if stage == "consistency":
            survivors = sorted(m.silo for m in secure_rounds.messages(s, rnd, "masked"))
            return SecAggConsistencyTask(**round_fields(ctx), secagg=info, survivors=survivors)
        task_type = self.masked_task if stage == "masked" else _TASKS[stage]
        return task_type(**round_fields(ctx), secagg=info)

    def receive(self, ctx: RoundContext, answer: Answer) -> dict[str, object]:
        """``secagg/<stage>`` steps: a protocol message, or the masked update."""
        stage = answer.step.removeprefix(STEP_PREFIX)
        if not answer.step.startswith(STEP_PREFIX) or stage not in (*MESSAGE_STEPS, "masked"):
            raise refuse_step(ctx, answer, "secure", "send secure-aggregation messages")
        if ctx.rnd.secagg_stage is None:
            raise Conflict(
                f"round {ctx.rnd.number} of run {ctx.run.id} does not use secure aggregation"
            )
        if stage == "masked":
            return self._receive_masked(ctx, answer)
        n_examples = answer.params.get("n_examples")
        if stage == "advertise":
            if not isinstance(n_examples, int):
                raise InvalidPayload(
                    f"silo {answer.silo!r}: advertise needs ?n_examples=N (the weight)"
                )
            check_n_examples(
                ctx.s, ctx.run.id, ctx.rnd.number, answer.silo, n_examples, "advertise"
            )
        secure_rounds.receive(
            ctx.s,
            ctx.run,
            ctx.rnd,
            ctx.spec,
            stage,
            answer.silo,
            answer.body,
            n_examples if isinstance(n_examples, int) else None,
        )
        self.advance(ctx, force=False)
        return {"stage": ctx.rnd.secagg_stage, "round_status": ctx.rnd.status}

    def _receive_masked(self, ctx: RoundContext, answer: Answer) -> dict[str, object]:
        """The masked update (or statistics) with the silo's metrics of the model it started
        from (`params`: n_examples, train_seconds, metrics) and its signed statement."""
        silo, params = answer.silo, answer.params
        try:
            raw_metrics = params.get("metrics")
            parsed = Metrics.model_validate_json(str(raw_metrics)) if raw_metrics else None
        except ValidationError as exc:
            raise InvalidPayload(f"metrics from silo {silo!r} are malformed: {exc}") from exc
        if not answer.statement_signature:
            raise InvalidPayload(
                f"masked update from silo {silo!r} lacks its signed ledger "
                f"statement ({STATEMENT_HEADER} header)"
            )
        n_examples, train_seconds = params.get("n_examples"), params.get("train_seconds")
        assert isinstance(n_examples, int) and isinstance(train_seconds, float), "route parses"
        s, rnd = ctx.s, ctx.rnd
        if s.get(Contribution, (rnd.run_id, rnd.number, silo)) is not None:
            raise AlreadyAnswered(
                f"silo {silo!r} already answered round {rnd.number} of {rnd.run_id}"
            )
        check_n_examples(s, rnd.run_id, rnd.number, silo, n_examples, "masked update")
        advertised = secure_rounds.advertised_count(s, rnd, silo)
        if advertised is not None and n_examples != advertised:
            # the weight applied was n_k / N of the advertised count: a different count in the
            # contribution, the aggregate entry and the signed statement would misstate it
            raise InvalidPayload(
                f"masked update from silo {silo!r} for round {rnd.number} of run {rnd.run_id} "
                f"claims n_examples={n_examples}, but the silo advertised {advertised} (the "
                "count its weight was computed from)"
            )
        secure_rounds.receive(s, ctx.run, rnd, ctx.spec, "masked", silo, answer.body)
        c = Contribution(
            run_id=rnd.run_id,
            round=rnd.number,
            silo=silo,
            kind="update",
            digest=tensors.digest(answer.body),
            n_examples=n_examples,
            payload=None,
            metrics_json=parsed.model_dump_json() if parsed and self.keeps_metrics else None,
            train_seconds=train_seconds,
        )
        s.add(c)
        answers_only(s, "contributions")  # no other silo's task waits on this row
        s.flush()
        result = accept_statement(
            s,
            ctx.hub.recorder,
            answer.federation,
            silo,
            c,
            True,
            answer.statement_signature,
            what="masked update",
            base_round=self.base_round(ctx, silo),
        )
        self.advance(ctx, force=False)
        return result

    def base_round(self, ctx: RoundContext, silo: str) -> int | None:
        """The round `silo`'s masked update was trained for, when it differs from the round it
        answers (asynchronous buffers); it is part of the statement the silo signs."""
        return None

    def advance(self, ctx: RoundContext, *, force: bool) -> None:
        """Move the protocol on; aggregate once unmasked, fail when it cannot be."""
        s, run, rnd = ctx.s, ctx.run, ctx.rnd
        if rnd.status != "open" or rnd.secagg_stage is None:
            return
        before = rnd.secagg_stage
        try:
            flat = secure_rounds.advance(s, run, rnd, ctx.spec, force=force)
        except SecAggError as exc:  # too few answers, or a bad message: never a stuck round
            fail_round(ctx, f"secure aggregation: {exc}")
            return
        if before == "masked" and rnd.secagg_stage in ("consistency", "unmask"):
            survivors = {m.silo for m in secure_rounds.messages(s, rnd, "masked")}
            shared = {m.silo for m in secure_rounds.messages(s, rnd, "share")}
            if shared - survivors:
                entry = {"round": rnd.number, "silos": sorted(shared - survivors)}
                ctx.hub.recorder.service(s, "dropout", entry, run.id)
        if flat is None:
            return
        updates = [c for c in contributions(s, run.id, rnd.number) if c.kind == "update"]
        try:
            self.on_sum(ctx, flat, updates)
        except plain.NonFiniteModel as exc:  # nothing stored: fail the round, not the answer
            fail_round(ctx, exc.detail)

    def on_sum(self, ctx: RoundContext, flat: np.ndarray, updates: list[Contribution]) -> None:
        """The unmasked weighted sum: the mean delta, through the strategy, the next model."""
        s, run, rnd, spec = ctx.s, ctx.run, ctx.rnd, ctx.spec
        flat = flat / secure_rounds.survivor_weight(s, rnd, spec)
        arrays, start = [], 0
        for _, shape in update_shapes(spec):  # the model delta (+ SCAFFOLD control delta)
            size = int(np.prod(shape))
            arrays.append(flat[start : start + size].reshape(shape).astype(np.float32))
            start += size
        senders = sorted(c.silo for c in updates)
        shared = {m.silo for m in secure_rounds.messages(s, rnd, "share")}
        recovered = sorted(shared - set(senders))
        if recovered:
            entry = {"round": rnd.number, "survivors": senders, "recovered": recovered}
            ctx.hub.recorder.service(s, "recovery", entry, run.id)
        extra = self.entry_extra(ctx, updates)
        plain.apply_strategy(ctx, arrays, updates, secure=True, extra=extra)
        rnd.status = "aggregated"
        rnd.closed_at = utcnow()
        record_metrics(ctx, self.scored(ctx, updates))

    def entry_extra(self, ctx: RoundContext, updates: list[Contribution]) -> dict[str, object]:
        """Fields a mode adds to the ``aggregate`` entry (asynchronous buffers: staleness)."""
        return {}

    def scored(self, ctx: RoundContext, updates: list[Contribution]) -> list[Contribution]:
        """The updates whose metrics score this round's input model (all of them here)."""
        return updates

    def close(self, ctx: RoundContext) -> None:
        if ctx.rnd.secagg_stage is None:  # opened without the protocol: answers in the clear
            plain.PlainEngine().close(ctx)
            return
        # the deadline passed: whoever has not answered this stage is a dropout
        self.advance(ctx, force=True)

    def awaited(self, ctx: RoundContext) -> set[str]:
        """Who the current stage waits for (not everyone who has not sent an update: in the
        advertise, share and unmask stages a silo answers without one)."""
        if ctx.rnd.secagg_stage is None:
            return awaited_default(ctx)
        return secure_rounds.waiting_for(ctx.s, ctx.rnd, ctx.rnd.secagg_stage)


def inbox(ctx: RoundContext, silo: str, what: str) -> list[bytes]:
    """What `silo` fetches for its next stage, as binary protocol messages: every advert
    (``adverts``), its own encrypted shares (``shares``) or its unmask request
    (``unmask-request``, one message)."""
    s, run, rnd, spec = ctx.s, ctx.run, ctx.rnd, ctx.spec
    if rnd.secagg_stage is None:
        raise Conflict(f"round {rnd.number} of run {run.id} does not use secure aggregation")
    if silo not in secure_rounds.roster(rnd):  # a run participant outside the round's roster
        raise Forbidden(f"silo {silo!r} is not on the roster of round {rnd.number} of {run.id}")
    order = secure_rounds.STAGES.index(rnd.secagg_stage)
    if what == "adverts" and order >= 1:
        state = secure_rounds.rebuild(s, run, rnd, spec, at="advertise")
        mine = neighbourhood(state.config, silo)
        return [m.to_bytes() for m in close_advertise(state) if mine is None or m.silo in mine]
    if what == "shares" and order >= 2:
        return secure_rounds.shares_for(s, rnd, silo)
    if what == "unmask-request" and rnd.secagg_stage == "unmask":
        state = secure_rounds.rebuild(s, run, rnd, spec)
        request = unmask_requests(state).get(silo)
        if request is None:
            raise Forbidden(f"silo {silo!r} is not a survivor of round {rnd.number}")
        mine = neighbourhood(state.config, silo)
        if mine is not None:  # only its neighbours' signatures count at the silo
            signed = {k: v for k, v in request.consistency.items() if k in mine}
            request = dataclasses.replace(request, consistency=signed)
        return [request.to_bytes()]
    raise Conflict(f"round {rnd.number} is at stage {rnd.secagg_stage!r}; {what!r} is not ready")


def neighbourhood(cfg: RoundConfig, silo: str) -> frozenset[str] | None:
    """Under SecAgg+, the silo and its neighbours: the only silos whose keys, adverts and
    consistency signatures it checks (`silos.secagg.client`), so a task, an adverts fetch and
    an unmask request carry O(degree) of them rather than O(N). None for the complete graph."""
    if cfg.degree is None:
        return None
    return cfg.neighbours[silo] | {silo}
