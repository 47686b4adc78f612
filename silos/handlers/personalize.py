"""The silo's personalization step, run in the evaluation round of a run that asks for it.

After scoring the final global model the silo makes its personalized model (`silos.personalize`
for PyTorch, `silos.personalize_trees` for trees) and a local-only model, writes the
personalized model into its workspace and signs a ``personalized`` ledger statement with the
model's sha256 and the three models' held-out metrics. The model itself is never sent. It runs
before the evaluation is reported, so the statement is in the ledger when the run finishes.
A failure to make the model (any error: a library's own, not only a `ModelError`) is logged,
naming the silo and the cause, and leaves the evaluation untouched: the silo then signs no
``personalized`` statement. Sending that statement is not guarded: a transport error fails
the round as any other, and the round is answered again.
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING

import numpy as np
from prefect import get_run_logger

from schemas.personalization import STATEMENT_KIND, PersonalizedPayload
from schemas.tasks import EvaluateTask, TreeEvaluateTask
from silos.exceptions import ModelError
from silos.flow_report import fmt_metrics
from silos.handlers.context import SiloContext
from silos.lineage_copy import keep_receipt
from silos.personalize_state import save_model, usable_head

if TYPE_CHECKING:  # torch: loaded by the evaluation round only
    from silos.personalize import Personalized, Split
    from silos.personalize_trees import PersonalizedTrees


def personalize_torch_round(
    ctx: SiloContext, work: EvaluateTask, global_params: list[np.ndarray]
) -> PersonalizedPayload | None:
    """Personalize the final PyTorch model at this silo when the run asks for it."""
    p = work.spec.personalize
    if p is None:
        return None
    from silos.personalize import encode_model, personalize

    try:
        spec = work.spec.torch_model
        rows = _rows(ctx, spec.task, p.val_fraction, work.spec.training.seed)
        head = usable_head(ctx.workspace, work.run_id) if p.method == "fedper" else None
        out = personalize(work.spec, global_params, rows, head)
        meta = {"run_id": work.run_id, "silo": ctx.silo, "method": p.method}
        model = encode_model(spec, out.params, meta)
    except Exception as exc:  # the evaluation is reported whatever personalization does
        _failed(ctx, work, exc)
        return None
    return _record(ctx, work, p.method, model, out)


def personalize_trees_round(ctx: SiloContext, work: TreeEvaluateTask) -> PersonalizedPayload | None:
    """Personalize the final tree model at this silo (continued boosting) when asked."""
    p = work.spec.personalize
    if p is None or work.spec.trees is None:
        return None
    from silos.personalize_trees import personalize_trees

    spec = work.spec.trees
    global_model = ctx.client.download_model(work.run_id, work.model_version)  # retried if lost
    try:
        rows = _rows(ctx, spec.task, p.val_fraction, 0)
        out = personalize_trees(spec, global_model, rows, p.max_trees, 0, p.min_confidence)
    except Exception as exc:  # the evaluation is reported whatever personalization does
        _failed(ctx, work, exc)
        return None
    return _record(ctx, work, p.method, out.model, out)


def _failed(ctx: SiloContext, work: EvaluateTask | TreeEvaluateTask, exc: Exception) -> None:
    """Log why this silo has no personalized model (an unexpected error's traceback at debug
    level): the evaluation goes on without it."""
    logger = get_run_logger()
    cause = str(exc) if isinstance(exc, ModelError) else f"{type(exc).__name__}: {exc}"
    logger.warning(
        "round %d: silo %s has no personalized model (its evaluation is still reported): %s",
        work.round,
        ctx.silo,
        cause,
    )
    if not isinstance(exc, ModelError):
        logger.debug("round %d: the error behind it", work.round, exc_info=exc)


def _rows(ctx: SiloContext, task: str, val_fraction: float, seed: int) -> Split:
    """The silo's training rows split into fit and validation rows, and its holdout."""
    from silos.personalize import split_rows

    d = ctx.data
    return split_rows(task, d.X_train, d.y_train, d.X_test, d.y_test, val_fraction, seed)


def _record(
    ctx: SiloContext,
    work: EvaluateTask | TreeEvaluateTask,
    method: str,
    model: bytes,
    out: Personalized | PersonalizedTrees,
) -> PersonalizedPayload:
    """Keep the model at the silo and sign its sha256 and metrics into the ledger."""
    save_model(ctx.workspace, work.run_id, model)
    payload = PersonalizedPayload(
        silo=ctx.silo,
        round=work.round,
        model_version=work.model_version,
        method=method,  # type: ignore[arg-type]
        model_sha256=hashlib.sha256(model).hexdigest(),
        steps=out.steps,
        n_fit=out.n_fit,
        n_val=out.n_val,
        global_metrics=out.global_metrics,
        personalized=out.personalized,
        local_only=out.local_only,
    )
    answer = ctx.client.submit_statement(
        work.run_id, STATEMENT_KIND, payload.model_dump(mode="json")
    )
    keep_receipt(ctx.workspace, answer)
    logger = get_run_logger()
    if out.steps == 0 and out.best_steps > 0:
        logger.info(
            "kept the starting model: the best on %d validation rows (%d steps) beat it on "
            "only %.0f%% of bootstrap resamples (min_confidence %.0f%%)",
            out.n_val,
            out.best_steps,
            100 * (out.confidence or 0.0),
            100 * (work.spec.personalize.min_confidence if work.spec.personalize else 0.0),
        )
    logger.info(
        "personalized (%s, %d steps, sha256 %s…): %s; global %s; local-only %s",
        method,
        out.steps,
        payload.model_sha256[:12],
        fmt_metrics(out.personalized),
        fmt_metrics(out.global_metrics),
        fmt_metrics(out.local_only),
    )
    return payload
