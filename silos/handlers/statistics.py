"""The statistics round: this silo's feature moments, masked (secure aggregation's masked stage).

Its advertise, share and unmask stages are the secure-aggregation handlers' (`handlers.secagg`).
"""

from __future__ import annotations

from schemas.tasks import StatisticsTask
from silos import secure_round
from silos.client_errors import AlreadyAnswered
from silos.contract_store import contract_for
from silos.federated_stats import local_moments
from silos.handlers.context import SiloContext
from silos.handlers.registry import register
from silos.lineage_copy import keep_receipt
from silos.local_data import local_train_table


def submit_statistics(ctx: SiloContext, work: StatisticsTask) -> None:
    """This silo's per-feature counts, sums and sums of squares, masked: the service learns
    only the federation's totals (from which every silo derives means and deviations)."""
    contract = contract_for(ctx.config)
    train = local_train_table(ctx.config)
    moments = local_moments(train, contract)
    message = secure_round.masked_update(ctx.client, ctx.key, work, ctx.workspace, moments)
    try:
        answer = ctx.client.submit_masked(work.run_id, work.round, message, len(train), 0.0, None)
    except AlreadyAnswered:
        return  # a retry after a lost answer: the first submission stands
    keep_receipt(ctx.workspace, answer)


register("statistics", submit_statistics)
