"""Federated distillation across model kinds (FedDistill): the run's settings, the soft-label
arithmetic both sides agree on, and the ``distilled`` ledger statement.

Each silo trains a model of its own kind (XGBoost at one, an MLP at another) on its own rows,
predicts P(y=1) on a synthetic reference set every silo generates identically
(`silos.distill_reference`), and sends n_k / N times that vector through secure aggregation: the
service learns only the example-weighted mean, the federation's soft labels, which it publishes as
the round's "model". The next round each silo adds the reference rows, labelled with those soft
labels and weighted by the share of them it chose on its own validation rows, to its own
training rows. Models never leave their silo; each silo signs its model's
sha256 and its held-out metrics (distilled and trained alone) into the ledger
(`schemas.distill_statement`).
"""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from schemas.member_kinds import DEFAULT, MemberKind, checked_kinds, kind_for

SOFT_LABELS = "soft_labels"  # the tensor name of a published soft-label vector


def _default_kinds() -> dict[str, MemberKind]:
    return {DEFAULT: "logreg"}


class DistillSpec(BaseModel):
    """What a distillation run asks of its silos.

    `kinds` maps a silo's enrolled name (``cleveland``, never a display name such as
    "Cleveland"; the service refuses a key that names no participant) to the model family it
    trains (``default``: every other silo).
    `reference_rows` synthetic rows carry the soft labels; a silo's loss is the mean over its
    own rows plus w times the mean over the reference rows, so a small silo is not swamped by
    many reference rows. Each silo picks w from `weights` itself: it holds back `val_fraction`
    of its training rows, trains with every w, keeps the one with the lowest validation
    log-loss (ties: the smaller), then refits on all its rows. With 0 in the grid a silo whose
    federation's soft labels do not help it keeps the model it trains alone, and it keeps that
    model too unless the chosen weight's lower loss holds on `min_confidence` of bootstrap
    resamples of its validation rows (the personalization gate, `silos.personalize_gate`:
    on a few dozen rows the lowest loss is often noise); a one-weight grid
    is a fixed weight (no validation split; (0,): silos never learn from each other, a
    baseline). The run's `rounds` are the distillation rounds; the run's `model` gives the
    hidden layers of the ``mlp`` members.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    kinds: dict[str, MemberKind] = Field(default_factory=_default_kinds)
    reference_rows: int = Field(default=512, ge=16, le=100_000)
    weights: tuple[float, ...] = Field(default=(0.0, 0.25, 0.5, 1.0), min_length=1, max_length=8)
    val_fraction: float = Field(default=0.25, gt=0, lt=1)
    min_confidence: float = Field(default=0.95, ge=0, lt=1, description="0: no gate")

    @model_validator(mode="before")
    @classmethod
    def _one_weight(cls, data: Any) -> Any:
        """A spec of before the grid (``weight: w``, as older runs' ledgers hold) is (w,)."""
        if isinstance(data, dict) and "weight" in data:
            if "weights" in data:
                raise ValueError("distill takes `weights` (a grid); drop the older `weight`")
            data = {k: v for k, v in data.items() if k != "weight"} | {"weights": (data["weight"],)}
        return data

    @field_validator("weights")
    @classmethod
    def _grid(cls, weights: tuple[float, ...]) -> tuple[float, ...]:
        bad = [w for w in weights if not 0 <= w <= 100]
        if bad:
            raise ValueError(f"distill.weights must lie in [0, 100], got {bad}")
        return tuple(sorted(set(weights)))  # ascending: a tie goes to the smaller weight

    @field_validator("kinds")
    @classmethod
    def _names(cls, kinds: dict[str, MemberKind]) -> dict[str, MemberKind]:
        return checked_kinds(
            kinds, "distill.kinds", '{"default": "logreg", "cleveland": "xgboost"}'
        )

    def kind_for(self, silo: str) -> MemberKind:
        """The model family `silo` trains."""
        return kind_for(self.kinds, silo)


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
