"""A distillation round: silos' P(y=1) on the reference set, securely averaged into soft labels.

The secure-aggregation protocol of `engines.secure` with `DistillTask` as the masked stage:
each silo masks n_k / N times its prediction vector (`schemas.distill`), so the service learns
only the example-weighted mean. That mean, clipped into [0, 1], is stored as the round's model
version (one tensor ``soft_labels``) with its ``aggregate`` and ``model_saved`` entries; the
next round's silos download it. No silo's model or own prediction reaches the service.
"""

from __future__ import annotations

import numpy as np

from aggregation.service import secure_rounds
from aggregation.service.engines.base import RoundContext
from aggregation.service.engines.common import contributors, digest_arrays, record_metrics
from aggregation.service.engines.secure import SecureEngine
from aggregation.service.model_store import save_round_model
from aggregation.service.tables import Contribution, utcnow
from schemas import tensors
from schemas.distill import SOFT_LABELS, soft_labels_from_sum
from schemas.tasks import DistillTask


class DistillEngine(SecureEngine):
    """Secure means of the silos' soft labels (see the module docstring)."""

    masked_task = DistillTask

    def on_sum(self, ctx: RoundContext, flat: np.ndarray, updates: list[Contribution]) -> None:
        """Publish the survivors' weighted mean prediction as the next soft labels."""
        s, run, rnd, spec = ctx.s, ctx.run, ctx.rnd, ctx.spec
        soft = soft_labels_from_sum(flat, secure_rounds.survivor_weight(s, rnd, spec))
        soft32 = soft.astype(np.float32)
        payload = tensors.encode(
            {SOFT_LABELS: soft32},
            {"run_id": run.id, "version": str(rnd.number), "kind": "soft_labels"},
        )
        entry = {
            "round": rnd.number,
            "contributors": contributors(updates),
            "aggregate_digest": digest_arrays([soft32]),
            "model_version": rnd.number,
            "distill": True,
            "reference_rows": int(soft.size),
            "secure_aggregation": True,
            "individual_updates_seen_by_service": False,
        }
        save_round_model(s, run, rnd, payload, tensors.digest(payload), entry, ctx.hub.recorder)
        rnd.status = "aggregated"
        rnd.closed_at = utcnow()
        record_metrics(ctx, updates)  # each silo's distilled model on its held-out rows
