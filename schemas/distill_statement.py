"""The ``distilled`` ledger statement: what a silo signs about its model in a distillation run
(`schemas.distill`). The model itself stays at the silo."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from schemas.distill import MemberKind
from schemas.wire import NAME_PATTERN, Metrics

STATEMENT_KIND = "distilled"


class DistilledPayload(BaseModel):
    """Payload of a silo's signed ``distilled`` statement (one per distillation round).

    The model stays at the silo; the statement carries its sha256 and, on the silo's held-out
    rows, its metrics and those of the same kind of model trained on the silo's rows alone.
    `weight` is the weight of the reference rows the silo chose (`DistillSpec.weights`; 0: it
    kept the model trained alone; None: no soft labels yet, or a statement of before the
    choice) and `validation` each candidate weight with its validation log-loss (empty for a
    one-weight grid, which needs no choice). `confidence` is the gate's
    (`DistillSpec.min_confidence`): the share of bootstrap resamples of the validation rows on
    which the lowest-loss weight beat weight 0; below the gate the silo kept weight 0 (None:
    the gate was not asked, or weight 0 had the lowest loss).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    silo: str = Field(pattern=NAME_PATTERN)
    round: int = Field(ge=1)
    kind: MemberKind
    model_sha256: str = Field(pattern="^[0-9a-f]{64}$")
    soft_labels_version: int = Field(
        ge=0, description="the published soft labels it learned from (0: none yet)"
    )
    reference_rows: int = Field(ge=0)
    n_train: int = Field(ge=0)
    distilled: Metrics
    alone: Metrics
    weight: float | None = Field(default=None, ge=0)
    validation: list[tuple[float, float]] = Field(default_factory=list, max_length=8)
    confidence: float | None = Field(default=None, ge=0, le=1)
