"""Tree-model rounds (XGBoost, LightGBM): grow, seal and submit trees; evaluate a version.

The steps are `silos.tree_round`'s; a silo that cannot grow trees this round declines it.
"""

from __future__ import annotations

from prefect import get_run_logger

from schemas.tasks import TreeEvaluateTask, TreeTrainTask
from schemas.tree_params import TreeSpecError, check_task
from schemas.wire import Metrics
from silos import tree_round
from silos.contract_store import contract_for
from silos.decline import Declined
from silos.exceptions import ModelError
from silos.flow_report import fmt_metrics
from silos.handlers.context import SiloContext
from silos.handlers.personalize import personalize_trees_round
from silos.handlers.plain import report_evaluation
from silos.handlers.registry import register
from silos.lineage_copy import keep_receipt


def train_trees_round(ctx: SiloContext, work: TreeTrainTask) -> dict[str, object] | Declined:
    """One tree round: score the base model, grow (or join the collective), seal, submit."""
    logger = get_run_logger()
    try:
        spec = tree_round.tree_spec(work)
        contract = contract_for(ctx.config)  # the run's accepted version
        # a spec whose objective is not the contract's task would train on the wrong labels
        check_task(spec, contract.task, len(contract.classes), contract.name)
    except (ModelError, TreeSpecError) as exc:
        return Declined("round", "training", str(exc))
    try:
        envelope, metrics, result = tree_round.grow(ctx.client, work, ctx.data, ctx.config)
    except ModelError as exc:  # these rows cannot grow trees this round: sit it out
        return Declined("round", "training", str(exc))  # the agent sends it
    if metrics is not None:
        logger.info(
            "round %d: current model on local holdout: %s", work.round, fmt_metrics(metrics)
        )
    answer = tree_round.submit(ctx.client, work, envelope, result.n_examples)
    keep_receipt(ctx.workspace, answer)
    logger.info(
        "round %d: %d new %s trees (%s) on %d rows in %.3fs; sealed update %s accepted",
        work.round,
        result.n_new_trees,
        spec.kind,
        spec.mode,
        result.n_examples,
        result.seconds,
        str(answer["digest"])[:16],
    )
    return {
        "round": work.round,
        "digest": answer["digest"],
        "train_seconds": result.seconds,
        "n_examples": result.n_examples,
        "metrics": metrics,
    }


def evaluate_trees_round(ctx: SiloContext, work: TreeEvaluateTask) -> Metrics:
    """An evaluation round of a tree run: score the model version on the local holdout."""
    metrics = tree_round.evaluate_version(ctx.client, work, ctx.data)
    personalize_trees_round(ctx, work)  # runs only when the spec asks for it
    return report_evaluation(ctx, work, metrics)


register("tree_train", train_trees_round, opens_round=True, trains=True)
register("tree_evaluate", evaluate_trees_round, opens_round=True)
