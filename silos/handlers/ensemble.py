"""A FedBoost ensemble run's three silo steps (`schemas.ensemble`, `silos.ensemble`).

- ``ensemble-members`` (an extension round): train this silo's member on its own rows with code
  installed here, upload it (signed request; the service records its sha256).
- ``ensemble_weights`` (the masked stage of a secure round): download the ensemble, check every
  member's sha256, send n_k / N times the mixture's log-loss gradient on the validation rows,
  masked. Its advertise, share and unmask stages are `handlers.secagg`'s.
- ``ensemble-evaluate`` (an extension round): refine the final weights on the validation rows
  into this silo's personal ensemble (kept in the workspace, never sent), score the final
  ensemble, this silo's member alone and the personal ensemble on the held-out rows, sign them
  into the ledger (``ensembled``, with the personal ensemble's sha256 and weights), send the
  final ensemble's metrics.

A silo whose table changed since it trained its member declines the weight and evaluation
rounds while it differs (`silos.ensemble.check_member_table`): its rows would no longer be
held out from its member.
"""

from __future__ import annotations

import hashlib

from prefect import get_run_logger
from pydantic import BaseModel, ConfigDict

from schemas.ensemble import EVALUATE_MODE, MEMBERS_MODE, STATEMENT_KIND, MemberKind, padded
from schemas.tasks import EnsembleWeightsTask, ExtensionTask
from silos import secure_round
from silos.client_errors import AlreadyAnswered
from silos.flow_report import fmt_metrics
from silos.handlers.context import SiloContext
from silos.handlers.registry import register, register_extension
from silos.lineage_copy import keep_receipt


class MemberBody(BaseModel):
    """What the members round asks: the kind of this silo's member."""

    model_config = ConfigDict(extra="ignore")

    kind: MemberKind


def member_round(ctx: SiloContext, work: ExtensionTask, body: MemberBody) -> dict[str, object]:
    """Train and upload this silo's member (recording the table it was trained on)."""
    from silos.ensemble import keep_member_table, member_message  # torch...: only in this run

    message, model = member_message(work.spec, body.kind, ctx.data)
    keep_member_table(ctx.workspace, work.run_id, model.sha256, ctx.data)
    try:
        answer = ctx.client.submit_extension(work.run_id, work.round, message)
    except AlreadyAnswered:  # a retry after a lost answer: the first member stands
        return {"round": work.round, "duplicate": True}
    get_run_logger().info(
        "round %d: %s member uploaded (sha256 %s…)", work.round, body.kind, model.sha256[:12]
    )
    return {"round": work.round, "kind": body.kind, "sha256": model.sha256, **answer}


def weights_round(ctx: SiloContext, work: EnsembleWeightsTask) -> dict[str, object]:
    """Submit the masked, weighted gradient of the mixture log-loss on the validation rows."""
    from silos.ensemble import check_member_table, load_ensemble, weight_gradient

    ensemble = load_ensemble(ctx.client.download_model(work.run_id, work.model_version))
    check_member_table(ctx.workspace, work.run_id, ensemble, ctx.data)
    gradient, metrics = weight_gradient(work.spec, ensemble, ctx.data)
    weight = work.secagg.weight if work.secagg.weight is not None else 1.0
    vector = secure_round.clip_l2(weight * padded(gradient), work.secagg.clip)
    message = secure_round.masked_update(ctx.client, ctx.key, work, ctx.workspace, vector)
    n_val = metrics.n_test
    try:
        # no metrics: the validation slice's stay here (only summed gradients leave a silo)
        answer = ctx.client.submit_masked(work.run_id, work.round, message, n_val, 0.0, None)
    except AlreadyAnswered:
        return {"round": work.round, "duplicate": True}
    keep_receipt(ctx.workspace, answer)
    get_run_logger().info(
        "round %d: ensemble v%d on %d validation rows: %s",
        work.round,
        work.model_version,
        n_val,
        fmt_metrics(metrics),
    )
    return {"round": work.round, "digest": answer.get("digest"), "metrics": metrics}


class EvaluateBody(BaseModel):
    model_config = ConfigDict(extra="ignore")


def evaluate_round(ctx: SiloContext, work: ExtensionTask, body: EvaluateBody) -> dict[str, object]:
    """Refine the final ensemble's weights on this silo's validation rows into its personal
    ensemble (kept here); score the final ensemble, this silo's member alone and the personal
    ensemble; sign all three and send the final ensemble's metrics."""
    from silos.ensemble import (
        check_member_table,
        evaluate,
        load_ensemble,
        personal_ensemble,
        save_personal,
    )

    payload = ctx.client.download_model(work.run_id, work.model_version)
    ensemble = load_ensemble(payload)
    check_member_table(ctx.workspace, work.run_id, ensemble, ctx.data)
    sha = hashlib.sha256(payload).hexdigest()
    personal = personal_ensemble(work.spec, ensemble, ctx.data)
    _, personal_sha = save_personal(ctx.workspace, work.run_id, personal)
    metrics, statement = evaluate(
        ctx.silo, work.round, ensemble, sha, ctx.data, (personal, personal_sha)
    )
    signed = ctx.client.submit_statement(
        work.run_id, STATEMENT_KIND, statement.model_dump(mode="json")
    )
    keep_receipt(ctx.workspace, signed)
    try:
        ctx.client.submit_extension(work.run_id, work.round, metrics.model_dump_json().encode())
    except AlreadyAnswered:
        return {"round": work.round, "duplicate": True}
    get_run_logger().info(
        "ensemble AUC %s, own member alone %s, personal ensemble %s (sha256 %s…, kept here)",
        statement.ensemble_auc,
        statement.member_auc,
        statement.personal_auc,
        personal_sha[:12],
    )
    return {"round": work.round, "metrics": metrics}


register_extension(MEMBERS_MODE, member_round, MemberBody, trains=True)
register("ensemble_weights", weights_round, opens_round=True, trains=True)
register_extension(EVALUATE_MODE, evaluate_round, EvaluateBody)
