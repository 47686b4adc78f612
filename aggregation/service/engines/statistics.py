"""The statistics round: silos' per-feature counts, sums and sums of squares, securely summed.

The secure-aggregation protocol of `engines.secure` with 64-bit exact sums
(`secure_rounds.STATS_BITS`); the unmasked sum is kept in the run (`Run.federation_stats`)
and handed to silos with every later task, for imputation and standardisation.
"""

from __future__ import annotations

import json

import numpy as np

from aggregation.service.engines.base import RoundContext
from aggregation.service.engines.common import contributors, digest_arrays
from aggregation.service.engines.secure import SecureEngine
from aggregation.service.tables import Contribution, utcnow
from schemas.tasks import StatisticsTask


class StatisticsEngine(SecureEngine):
    """Secure sums of feature moments; no model (see the module docstring)."""

    masked_task = StatisticsTask

    def on_sum(self, ctx: RoundContext, flat: np.ndarray, updates: list[Contribution]) -> None:
        """Keep the federation's summed feature moments; every later task hands them on."""
        run, rnd = ctx.run, ctx.rnd
        run.federation_stats = json.dumps([float(x) for x in flat])
        entry = {
            "round": rnd.number,
            "statistics": True,
            "contributors": contributors(updates),
            "aggregate_digest": digest_arrays([flat.astype(np.float32)]),
            "secure_aggregation": True,
            "individual_updates_seen_by_service": False,
        }
        ctx.hub.recorder.service(ctx.s, "aggregate", entry, run.id)
        rnd.status = "closed"
        rnd.closed_at = utcnow()
