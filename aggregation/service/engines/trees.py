"""Tree rounds in turns or in parallel (tree modes ``bagging`` and ``cyclic``), and the
evaluation rounds of every tree run.

Silos grow trees locally and send them sealed to the service (`tree_rounds` opens, checks
and stores them): in ``bagging`` every silo grows from the round's input model and the round
closes with the n_k / N scaled merge; in ``cyclic`` silos take turns (an order rotating every
round), each growing from the chain so far. See `aggregation/trees/README.md`.
"""

from __future__ import annotations

import hashlib

from aggregation.service import tree_rounds
from aggregation.service.contributions import open_round_for
from aggregation.service.engines.base import AfterCommit, Answer, RoundContext
from aggregation.service.engines.common import (
    answered,
    awaited_default,
    close_with_answers,
    refuse_step,
    round_fields,
)
from aggregation.service.federations import find_silo
from aggregation.service.statements import accept_statement
from aggregation.service.tables import Contribution
from schemas.tasks import Task, TreeEvaluateTask, TreeTaskInfo, TreeTrainTask


class TreeEngine:
    """Sealed tree updates, merged by the service (see the module docstring)."""

    def __init__(self, mode: str) -> None:
        self.mode = mode

    def start(self, ctx: RoundContext, deadline_s: float) -> AfterCommit | None:
        return None

    def task_for(self, ctx: RoundContext, silo: str) -> Task | None:
        """The tree task for `silo`, or None (already answered, or not its turn yet)."""
        rnd = ctx.rnd
        if answered(ctx, silo):
            return None
        if rnd.kind != "train":
            return evaluate_task(ctx)
        info = TreeTaskInfo(seal_key=ctx.hub.seal_public.hex())
        trees = tree_rounds.tree_spec(ctx.spec)
        if trees.mode == "cyclic":
            if tree_rounds.waiting_on_earlier(ctx.s, ctx.run, rnd, silo):
                return None
            info.order = tree_rounds.turn_order(ctx.s, ctx.run, rnd)
        if trees.mode == "collective":
            info.collective = tree_rounds.collective_info(rnd, silo)
            if info.collective is None:
                return None
        base = tree_rounds.base_model(ctx.s, ctx.run, rnd, trees)
        info.base_model_sha256 = hashlib.sha256(base).hexdigest() if base else None
        return TreeTrainTask(**round_fields(ctx), trees=info)

    def receive(self, ctx: RoundContext, answer: Answer) -> dict[str, object]:
        if answer.step != "trees":
            raise refuse_step(ctx, answer, self.mode, "send trees sealed to .../trees")
        return receive_trees(ctx, answer)

    def advance(self, ctx: RoundContext, *, force: bool) -> None:
        return None  # the round waits for its deadline or its last silo

    def close(self, ctx: RoundContext) -> None:
        close_with_answers(ctx, _merge)

    def awaited(self, ctx: RoundContext) -> set[str]:
        return awaited_default(ctx)


def evaluate_task(ctx: RoundContext) -> Task:
    """Score the round's input tree model on the silo's holdout."""
    info = TreeTaskInfo(seal_key=ctx.hub.seal_public.hex())
    return TreeEvaluateTask(**round_fields(ctx), trees=info)


def receive_trees(ctx: RoundContext, answer: Answer) -> dict[str, object]:
    """Open, check and store a silo's sealed tree update with its signed statement."""
    s, run, rnd = ctx.s, ctx.run, ctx.rnd
    if tree_rounds.existing_update(s, run.id, rnd.number, answer.silo) is None:
        open_round_for(s, run.id, rnd.number, answer.silo, "train")
    row = find_silo(s, answer.federation, answer.silo)
    assert row is not None, "the caller is an authenticated silo"
    c, created = tree_rounds.submit_tree_update(
        s, run, rnd, ctx.spec, answer.silo, row.public_key, answer.body, ctx.hub.seal_key
    )
    return accept_statement(
        s,
        ctx.hub.recorder,
        answer.federation,
        answer.silo,
        c,
        created,
        answer.statement_signature,
        what="tree update",
    )


def _merge(ctx: RoundContext, updates: list[Contribution]) -> None:
    tree_rounds.close_tree_round(ctx.s, ctx.run, ctx.rnd, ctx.spec, updates, ctx.hub.recorder)
