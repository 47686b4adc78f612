"""A distillation round's masked stage: train this silo's own kind of model, send its weighted
P(y=1) on the reference rows masked, and sign the model's sha256 and metrics into the ledger.

Its advertise, share and unmask stages are the secure-aggregation handlers' (`handlers.secagg`).
The model is kept in the workspace (`silos.distill.save_model`) and never sent.
"""

from __future__ import annotations

import hashlib
from typing import Any

from prefect import get_run_logger

from schemas.distill_statement import STATEMENT_KIND, DistilledPayload
from schemas.tasks import DistillTask
from silos import secure_round
from silos.client_errors import AlreadyAnswered
from silos.contract_store import contract_for
from silos.flow_report import fmt_metrics
from silos.handlers.context import SiloContext
from silos.handlers.registry import register
from silos.lineage_copy import keep_receipt


def distill_round(ctx: SiloContext, work: DistillTask) -> dict[str, object]:
    """Learn from the published soft labels (if any), predict the reference rows, submit masked."""
    from silos.distill import decode_soft_labels, distill_step, reference_rows, save_model

    spec, data, logger = work.spec, ctx.data, get_run_logger()
    X_ref = reference_rows(spec, work.run_id, contract_for(ctx.config), work.stats)
    soft = None
    if work.model_version > 0:  # version 0 is the empty start: nobody has predicted yet
        payload = ctx.client.download_model(work.run_id, work.model_version)
        soft = decode_soft_labels(payload, len(X_ref))
    out = distill_step(
        spec, ctx.silo, (data.X_train, data.y_train), (data.X_test, data.y_test), X_ref, soft
    )
    model = out.model.to_bytes()
    save_model(ctx.workspace, work.run_id, model)
    weight = work.secagg.weight if work.secagg.weight is not None else 1.0
    message = secure_round.masked_update(
        ctx.client, ctx.key, work, ctx.workspace, weight * out.reference_predictions
    )
    try:
        answer: dict[str, Any] = ctx.client.submit_masked(
            work.run_id, work.round, message, out.n_train, 0.0, out.distilled.model_dump_json()
        )
    except AlreadyAnswered:  # a retry after a lost answer: the first submission stands
        return {"round": work.round, "duplicate": True}
    keep_receipt(ctx.workspace, answer)
    statement = DistilledPayload(
        silo=ctx.silo,
        round=work.round,
        kind=out.kind,  # type: ignore[arg-type]
        model_sha256=hashlib.sha256(model).hexdigest(),
        soft_labels_version=work.model_version,
        reference_rows=len(X_ref) if soft is not None else 0,
        n_train=out.n_train,
        distilled=out.distilled,
        alone=out.alone,
        weight=out.weight,
        validation=list(out.validation),
        confidence=out.confidence,
    )
    signed = ctx.client.submit_statement(
        work.run_id, STATEMENT_KIND, statement.model_dump(mode="json")
    )
    keep_receipt(ctx.workspace, signed)
    logger.info(
        "round %d: %s model (sha256 %s…, soft labels v%d, weight %s%s): %s; alone %s",
        work.round,
        out.kind,
        statement.model_sha256[:12],
        work.model_version,
        "-" if out.weight is None else f"{out.weight:g}",
        "" if out.confidence is None else f", gate confidence {out.confidence:.2f}",
        fmt_metrics(out.distilled),
        fmt_metrics(out.alone),
    )
    return {
        "round": work.round,
        "digest": answer.get("digest"),
        "n_examples": out.n_train,
        "metrics": out.distilled,
    }


register("distill", distill_round, opens_round=True, trains=True)
