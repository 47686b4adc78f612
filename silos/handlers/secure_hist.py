"""Secure-histogram runs (tree mode ``secure-hist``): a handler per step, each run inside
the round's Prefect task run (`silos.agent.serve_round`).

The steps are `silos.hist_round`'s (state kept in this agent process); a step this silo must
not or cannot do makes it leave the run, saying why.
"""

from __future__ import annotations

from prefect import get_run_logger

from schemas.secagg.exceptions import SecAggError
from schemas.secure_hist.errors import SecureHistError
from schemas.tasks import HistTask
from schemas.wire import HistStage
from silos import hist_round
from silos.contract_store import contract_for
from silos.decline import Declined
from silos.handlers.context import SiloContext
from silos.handlers.registry import register


def _step(ctx: SiloContext, work: HistTask) -> None:
    stage = work.hist.stage
    if stage == HistStage.advertise:
        policy = ctx.config.policy.trees.min_rows_per_node
        data = ctx.data
        contract = contract_for(ctx.config)  # the run's accepted version
        if data.dask is not None:  # the table on the silo's Dask cluster: a shard per partition
            hist_round.advertise_dask(ctx.client, work, data.dask, contract, policy)
        else:
            hist_round.advertise(ctx.client, work, data.X_train, data.y_train, contract, policy)
    elif stage == HistStage.masked:
        hist_round.masked(ctx.client, work)
    elif stage == HistStage.consistency:
        hist_round.consistency(ctx.client, work)
    else:
        hist_round.unmask(ctx.client, work)


def hist_step(ctx: SiloContext, work: HistTask) -> str | Declined:
    """One secure-hist step; a step this silo must not or cannot do makes it leave the run
    (returned as its `Declined`, which the agent sends)."""
    try:
        _step(ctx, work)
    except (hist_round.LeaveRun, SecureHistError, SecAggError) as exc:
        # refusing depends only on what the service already knows (README: minimum rows)
        hist_round.forget(ctx.silo, work.run_id)
        reason = f"secure-hist {work.hist.stage}: {exc}"
        if isinstance(exc, hist_round.LeaveRun):  # its policy (minimum rows per node)
            return Declined("run", "policy", reason)
        return Declined("run", "training", reason)
    get_run_logger().debug("secure-hist %s counter %d sent", work.hist.stage, work.hist.counter)
    return str(work.hist.stage)


register("hist", hist_step)
