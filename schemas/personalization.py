"""The ``personalized`` ledger statement: what a silo signs about its personalized model.

The model itself stays at the silo; the statement carries its sha256 and, on the silo's
held-out rows, the metrics of the global model, the personalized model and a model trained on
the silo's rows alone, so the ledger can show for each silo whether the federation helped.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from schemas.wire import NAME_PATTERN, Metrics

STATEMENT_KIND = "personalized"


class PersonalizedPayload(BaseModel):
    """Payload of a silo's signed ``personalized`` statement (validated by the service)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    silo: str = Field(pattern=NAME_PATTERN)
    round: int = Field(ge=1, description="the evaluation round of the final global model")
    model_version: int = Field(ge=0, description="the global model version it started from")
    method: Literal["finetune", "fedper", "ditto"]
    model_sha256: str = Field(pattern="^[0-9a-f]{64}$", description="the personalized model's")
    steps: int = Field(ge=0, description="epochs (PyTorch) or extra boosting rounds (trees) kept")
    n_fit: int = Field(ge=0, description="training rows used to fit")
    n_val: int = Field(ge=0, description="training rows held back for early stopping")
    global_metrics: Metrics
    personalized: Metrics
    local_only: Metrics

    def worse_than_alone(self, metric: str, higher_is_better: bool) -> bool | None:
        """Whether the global model scores worse than the local-only one on `metric` (None
        where either value is undefined)."""
        g, alone = getattr(self.global_metrics, metric), getattr(self.local_only, metric)
        if g is None or alone is None:
            return None
        return bool(g < alone) if higher_is_better else bool(g > alone)
