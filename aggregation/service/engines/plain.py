"""Plain rounds of a PyTorch run: silos send their updates in the clear, the service averages.

Training rounds take tensor updates (`contributions.submit_update`) and close with the
example-weighted mean delta and the run's strategy (`apply_strategy`, shared with the secure
engine); evaluation rounds of every PyTorch run (secure ones too) collect metrics.

A new model is published only when every parameter (and the strategy's state) is finite:
finite updates can still overflow float32 together (a silo sending deltas near float32's
maximum), and a non-finite global model would poison every later round. `apply_strategy`
raises `NonFiniteModel` before anything is stored; a plain round then fails (``round_failed``,
naming the round and its contributors) and the previous model version stays the latest.
"""

from __future__ import annotations

import numpy as np

from aggregation.service import contributions as crud
from aggregation.service.engines.base import AfterCommit, Answer, RoundContext
from aggregation.service.engines.common import (
    answered,
    awaited_default,
    close_with_answers,
    contributors,
    digest_arrays,
    fail_round,
    refuse_step,
    round_fields,
)
from aggregation.service.exceptions import Conflict
from aggregation.service.model_store import save_round_model
from aggregation.service.rounds import active_silos
from aggregation.service.runs import get_model
from aggregation.service.statements import accept_statement
from aggregation.service.tables import Contribution
from aggregation.strategies import make_strategy
from aggregation.strategies.aggregate import weighted_mean
from schemas import tensors
from schemas.specs import param_shapes, update_shapes
from schemas.tasks import EvaluateTask, Task, TrainTask


class NonFiniteModel(Conflict):
    """The round's new model (or the strategy's state) would hold inf or NaN: nothing was
    stored; the message names the round, the arrays and the contributors."""


class PlainEngine:
    """Updates in the clear, averaged by the service (see the module docstring)."""

    def start(self, ctx: RoundContext, deadline_s: float) -> AfterCommit | None:
        return None

    def task_for(self, ctx: RoundContext, silo: str) -> Task | None:
        if answered(ctx, silo):
            return None
        task_type = TrainTask if ctx.rnd.kind == "train" else EvaluateTask
        return task_type(**round_fields(ctx))

    def receive(self, ctx: RoundContext, answer: Answer) -> dict[str, object]:
        if answer.step != "update":
            raise refuse_step(ctx, answer, "plain", "send a tensor update to .../update")
        c, created = crud.submit_update(ctx.s, ctx.run.id, ctx.rnd.number, answer.silo, answer.body)
        return accept_statement(
            ctx.s,
            ctx.hub.recorder,
            answer.federation,
            answer.silo,
            c,
            created,
            answer.statement_signature,
        )

    def advance(self, ctx: RoundContext, *, force: bool) -> None:
        return None  # nothing to move on: the round waits for its deadline or its last silo

    def close(self, ctx: RoundContext) -> None:
        try:
            close_with_answers(ctx, aggregate)
        except NonFiniteModel as exc:  # raised before anything was stored: fail the round
            fail_round(ctx, exc.detail)

    def awaited(self, ctx: RoundContext) -> set[str]:
        return awaited_default(ctx)


def aggregate(ctx: RoundContext, updates: list[Contribution]) -> None:
    """The example-weighted mean of the silos' deltas, through the strategy."""
    shapes = update_shapes(ctx.spec)  # the model delta (+ SCAFFOLD's control delta)
    deltas = [tensors.decode_expected(c.payload or b"", shapes)[0] for c in updates]
    # accumulated in float64 (`weighted_sum`): large but finite float32 deltas do not
    # overflow in the sum; the mean of finite deltas is finite in float32 again
    mean_delta = weighted_mean(deltas, [c.n_examples or 0 for c in updates])
    largest = {
        c.silo: max((float(np.abs(d).max()) for d in delta if d.size), default=0.0)
        for c, delta in zip(updates, deltas, strict=True)
    }
    apply_strategy(ctx, mean_delta, updates, secure=False, largest=largest)


def apply_strategy(
    ctx: RoundContext,
    mean_delta: list[np.ndarray],
    updates: list[Contribution],
    *,
    secure: bool,
    extra: dict[str, object] | None = None,
    largest: dict[str, float] | None = None,
) -> None:
    """The strategy's server step on the mean delta; the new model version and its entries
    (`extra`: fields a mode adds to, or overrides in, the ``aggregate`` entry).

    Raises
    ------
    NonFiniteModel
        The new parameters or the strategy's new state are not all finite; nothing was
        stored (`largest`: each contributor's largest absolute delta, for the message).
    """
    s, run, rnd, spec = ctx.s, ctx.run, ctx.rnd, ctx.spec
    shapes = param_shapes(spec.torch_model)
    current, _ = tensors.decode_expected(
        get_model(s, run.id, rnd.input_model_version).payload, shapes
    )
    state = tensors.decode(run.strategy_state)[0] if run.strategy_state else {}
    participation = len(updates) / max(len(active_silos(s, run.id)), len(updates), 1)
    strategy = make_strategy(spec.strategy)
    with np.errstate(over="ignore", invalid="ignore"):  # an overflow is refused just below
        new_params, new_state = strategy.apply_round(current, mean_delta, state, participation)
    require_finite(ctx, shapes, new_params, new_state, updates, largest)
    payload = tensors.encode(
        dict(zip([n for n, _ in shapes], new_params, strict=True)),
        {
            "run_id": run.id,
            "version": str(rnd.number),
            "contributors": ",".join(c.silo for c in updates),
        },
    )
    entry = {
        "round": rnd.number,
        "contributors": contributors(updates),
        "aggregate_digest": digest_arrays(mean_delta),
        "model_version": rnd.number,
        "strategy": spec.strategy.name,
        "secure_aggregation": secure,
        "individual_updates_seen_by_service": not secure,
    }
    entry.update(extra or {})
    save_round_model(s, run, rnd, payload, tensors.digest(payload), entry, ctx.hub.recorder)
    run.strategy_state = tensors.encode(new_state) if new_state else None


def require_finite(
    ctx: RoundContext,
    shapes: list[tuple[str, tuple[int, ...]]],
    new_params: list[np.ndarray],
    new_state: dict[str, np.ndarray],
    updates: list[Contribution],
    largest: dict[str, float] | None,
) -> None:
    """Raise `NonFiniteModel` unless every new parameter and strategy-state array is finite."""
    named = [(n, a) for (n, _), a in zip(shapes, new_params, strict=True)]
    named += [(f"strategy state {k}", v) for k, v in sorted(new_state.items())]
    bad = [n for n, a in named if not np.isfinite(a).all()]
    if not bad:
        return
    rnd = ctx.rnd
    who = []
    for c in updates:
        size = "" if largest is None else f", largest |delta| {largest.get(c.silo, 0.0):.3g}"
        who.append(f"{c.silo} (n_examples {c.n_examples}{size})")
    raise NonFiniteModel(
        f"round {rnd.number}: the aggregated model is not finite (inf or NaN in "
        f"{', '.join(bad)}): not published, model version {rnd.input_model_version} stays the "
        f"latest; contributors: {'; '.join(who) or 'none'}"
    )
