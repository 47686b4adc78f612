"""Federated distillation across model kinds (FedDistill): the run's settings, the soft-label
arithmetic both sides agree on, and the ``distilled`` ledger statement.

Each silo trains a model of its own kind (XGBoost at one, an MLP at another) on its own rows,
predicts P(y=1) on a synthetic reference set every silo generates identically
(`silos.distill_reference`), and sends n_k / N times that vector through secure aggregation: the
service learns only the example-weighted mean, the federation's soft labels, which it publishes as
the round's "model". The next round each silo adds the reference rows, labelled with those soft
labels, to its own training rows. Models never leave their silo; each silo signs its model's
sha256 and its held-out metrics (distilled and trained alone) into the ledger
(`schemas.distill_statement`).
"""

from __future__ import annotations

import hashlib
import re
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator

MemberKind = Literal["logreg", "mlp", "xgboost", "lightgbm"]
SOFT_LABELS = "soft_labels"  # the tensor name of a published soft-label vector
# a silo name (schemas.wire.NAME_PATTERN; wire imports the specs, so it is not imported here)
_SILO_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$")
DEFAULT = "default"  # the key of `DistillSpec.kinds` every silo not named there uses


def _default_kinds() -> dict[str, MemberKind]:
    return {DEFAULT: "logreg"}


class DistillSpec(BaseModel):
    """What a distillation run asks of its silos.

    `kinds` maps a silo name to the model family it trains (``default``: every other silo).
    `reference_rows` synthetic rows carry the soft labels; a silo's loss is the mean over its
    own rows plus `weight` times the mean over the reference rows (0: silos never learn from
    each other, a baseline), so a small silo is not swamped by many reference rows. The run's
    `rounds` are the distillation rounds; the run's `model` gives the hidden layers of the
    ``mlp`` members.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    kinds: dict[str, MemberKind] = Field(default_factory=_default_kinds)
    reference_rows: int = Field(default=512, ge=16, le=100_000)
    weight: float = Field(default=1.0, ge=0, le=100)

    @field_validator("kinds")
    @classmethod
    def _names(cls, kinds: dict[str, MemberKind]) -> dict[str, MemberKind]:
        bad = [k for k in kinds if k != DEFAULT and not _SILO_NAME.match(k)]
        if bad:
            raise ValueError(f"distill.kinds names silos that cannot exist: {bad}")
        if DEFAULT not in kinds:
            raise ValueError(
                'distill.kinds needs a "default" kind for the silos it does not name, '
                'e.g. {"default": "logreg", "Cleveland": "xgboost"}'
            )
        return kinds

    def kind_for(self, silo: str) -> MemberKind:
        """The model family `silo` trains."""
        return self.kinds.get(silo, self.kinds[DEFAULT])


def reference_seed(run_id: str) -> int:
    """The reference set's seed: every silo derives the same one from the run id alone."""
    return int.from_bytes(hashlib.sha256(f"fedsilo-distill:{run_id}".encode()).digest()[:8], "big")


def weighted_soft_labels(predictions: list[np.ndarray], n_examples: list[int]) -> np.ndarray:
    """The example-weighted mean of the silos' P(y=1) vectors: what secure aggregation of
    w_k * p_k (w_k = n_k / N) yields once divided by the survivors' total weight. The reference
    the engine's arithmetic is tested against."""
    if not predictions or len(predictions) != len(n_examples):
        raise ValueError("one prediction vector per silo, with its example count")
    weights = np.asarray(n_examples, dtype=np.float64)
    if (weights <= 0).any():
        raise ValueError(f"example counts must be positive, got {n_examples}")
    stacked = np.stack([np.asarray(p, dtype=np.float64) for p in predictions])
    return np.clip(weights @ stacked / weights.sum(), 0.0, 1.0)


def soft_labels_from_sum(total: np.ndarray, survivor_weight: float) -> np.ndarray:
    """The published soft labels from the unmasked sum of w_k * p_k over the survivors:
    divided by their total weight, clipped into [0, 1] (quantization noise can step out)."""
    if survivor_weight <= 0:
        raise ValueError("no surviving silo's weight: there are no soft labels to publish")
    return np.clip(np.asarray(total, dtype=np.float64) / survivor_weight, 0.0, 1.0)
