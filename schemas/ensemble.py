"""FedBoost ensembles: a weighted mixture of per-silo models, its weights learned federatedly.

Round 1 (members): each silo trains one model of its kind on its own training rows (less a
validation slice) and uploads it; the service stores them, sorted by silo, as version 1 of the
run's model: the ensemble artifact (`EnsembleArtifact`, JSON: every member's silo, kind, sha256
and bytes, and the mixture weights, uniform at first). Rounds 2..R (weights): each silo
downloads the artifact, checks every member's sha256, and on its validation rows computes the
gradient of the mixture's mean log-loss with respect to the mixture logits (`mixture_gradient`);
it sends n_k / N times that vector through secure aggregation, so the service learns only the
federation's mean gradient, and takes one exponentiated-gradient step (`weight_step`). The last
(evaluation) round: each silo scores the final ensemble and its own member alone on its held-out
rows and signs both into the ledger (`EnsembledPayload`).

What leaks: every member is trained on one silo's rows and is shared with every silo (and the
service); a member reveals what any model trained on those rows reveals. The weight gradients
are only seen summed.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator

from schemas.member_kinds import DEFAULT, MemberKind, checked_kinds, kind_for

MAX_MEMBERS = 32  # the securely summed gradient has this length (members in silo order, 0-padded)
STATEMENT_KIND = "ensembled"
LOCAL_FORMAT = "fedsilo-local-model/1"  # the header of `silos.local_models` bytes
MEMBERS_MODE = "ensemble-members"  # round 1's mode (silos answer with their member's bytes)
EVALUATE_MODE = "ensemble-evaluate"  # the closing evaluation round's mode
_EPS = 1e-12
INT32_MAX = 2**31 - 1  # the service stores a member's n_train in a 32-bit integer column


class EnsembleSpec(BaseModel):
    """What an ensemble run asks of its silos.

    `kinds` maps a silo's enrolled name (``cleveland``, never a display name such as
    "Cleveland"; the service refuses a key that names no participant) to the kind of its
    member (``default``: every other silo). Each silo holds out `val_fraction` of its training
    rows to learn the weights on; `lr` is the step size of the exponentiated-gradient update
    of the weights. The run's `rounds` are the
    member round plus `rounds - 1` weight rounds; the run's `model` gives the hidden layers of
    the ``mlp`` members. In the closing round each silo refines the federation's weights with
    `personal_steps` such steps on its own validation rows alone (0: its personal ensemble is
    the federation's); that personal ensemble stays at the silo.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    kinds: dict[str, MemberKind] = Field(default_factory=lambda: _default_kinds())
    val_fraction: float = Field(default=0.3, gt=0, lt=1)
    lr: float = Field(default=4.0, gt=0, le=1000)
    personal_steps: int = Field(default=20, ge=0, le=1000)

    @field_validator("kinds")
    @classmethod
    def _names(cls, kinds: dict[str, MemberKind]) -> dict[str, MemberKind]:
        return checked_kinds(kinds, "ensemble.kinds", '{"default": "xgboost", "cleveland": "mlp"}')

    def kind_for(self, silo: str) -> MemberKind:
        """The kind of `silo`'s member."""
        return kind_for(self.kinds, silo)


def _default_kinds() -> dict[str, MemberKind]:
    return {DEFAULT: "xgboost"}


class Member(BaseModel):
    """One silo's model in the ensemble; `model_b64` is `silos.local_models` bytes."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    silo: str
    kind: MemberKind
    sha256: str = Field(pattern="^[0-9a-f]{64}$")
    n_train: int = Field(ge=1, le=INT32_MAX)
    model_b64: str

    def model_bytes(self) -> bytes:
        """The member's bytes, checked against its sha256 (ValueError naming the silo if not)."""
        data = base64.b64decode(self.model_b64)
        if hashlib.sha256(data).hexdigest() != self.sha256:
            raise ValueError(f"member of silo {self.silo!r} does not match its sha256")
        return data


class EnsembleArtifact(BaseModel):
    """The run's model in an ensemble run: members in silo order and their mixture weights."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    format: Literal["fedsilo-ensemble/1"] = "fedsilo-ensemble/1"
    run_id: str
    members: list[Member] = Field(min_length=1, max_length=MAX_MEMBERS)
    weights: list[float]
    weight_round: int = Field(ge=0, description="weight rounds applied so far")

    def summary(self) -> list[dict[str, object]]:
        """Members without their bytes, each with its weight (for the ledger and views)."""
        return [
            {"silo": m.silo, "kind": m.kind, "sha256": m.sha256, "weight": w}
            for m, w in zip(self.members, self.weights, strict=True)
        ]


class EnsembledPayload(BaseModel):
    """A silo's signed ``ensembled`` statement: the final ensemble against its own member alone,
    on the silo's held-out rows, and the silo's personal ensemble (the same members, weights
    refined on its validation rows; kept at the silo, only its sha256 is here; the ``personal_``
    fields are None in statements of before it)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    silo: str
    round: int = Field(ge=1)
    ensemble_sha256: str = Field(pattern="^[0-9a-f]{64}$")
    member_sha256: str | None = Field(default=None, pattern="^[0-9a-f]{64}$")
    n_test: int = Field(ge=0)
    ensemble_auc: float | None
    member_auc: float | None
    ensemble_loss: float
    member_loss: float | None
    personal_sha256: str | None = Field(default=None, pattern="^[0-9a-f]{64}$")
    personal_auc: float | None = None
    personal_loss: float | None = None


def check_member_bytes(data: bytes, kind: str, n_features: int) -> None:
    """Check a member's bytes (`silos.local_models` format) without loading them: the header's
    format, kind and feature count, and the payload's shape (the parameter count of a PyTorch
    member, the feature count an XGBoost or LightGBM model records). A member that passes
    loads at every silo unless its library rejects its content.

    Raises
    ------
    ValueError
        saying what does not fit.
    """
    head, _, payload = data.partition(b"\n")
    try:
        header = json.loads(head)
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
        raise ValueError(f"the model has no {LOCAL_FORMAT} header ({exc})") from exc
    if not isinstance(header, dict) or header.get("format") != LOCAL_FORMAT:
        raise ValueError(f"the model is not in the {LOCAL_FORMAT} format")
    if header.get("kind") != kind or header.get("n_features") != n_features:
        raise ValueError(
            f"the model is a {header.get('kind')!r} of {header.get('n_features')} features; the "
            f"run asks for a {kind} of {n_features}"
        )
    if kind in ("logreg", "mlp"):
        hidden = header.get("hidden", []) if kind == "mlp" else []
        # `type(h) is int`: not a bool, nor a float
        if not isinstance(hidden, list) or not all(type(h) is int and h > 0 for h in hidden):
            raise ValueError(f"the header's hidden {hidden!r:.80} is not a list of positive sizes")
        sizes = [n_features, *hidden, 1]
        expected = 4 * sum(a * b + b for a, b in zip(sizes[:-1], sizes[1:], strict=True))
        if len(payload) != expected:
            raise ValueError(f"{len(payload)} parameter bytes; hidden {hidden} needs {expected}")
        # float32 little-endian, as `silos.local_models` writes them: a NaN or infinite
        # parameter would make every silo's mixture (and weight round) non-finite
        if not np.isfinite(np.frombuffer(payload, "<f4")).all():
            raise ValueError("the model's parameters are not all finite (NaN or infinity)")
    elif kind == "xgboost":
        try:
            # every number finite (leaf values, thresholds...): NaN/Infinity tokens or
            # overflowing literals are refused while parsing
            doc = json.loads(payload, parse_constant=_no_constant, parse_float=_finite_float)
            found = doc["learner"]["learner_model_param"]["num_feature"]
        except (ValueError, KeyError, TypeError, RecursionError) as exc:
            raise ValueError(f"not an XGBoost JSON model of finite numbers ({exc})") from exc
        if str(found) != str(n_features):
            raise ValueError(f"the XGBoost model has {found} features, not {n_features}")
    elif (
        f"\nmax_feature_idx={n_features - 1}\n".encode() not in payload[:4096]
        or b"\nend of trees\n" not in payload
    ):
        raise ValueError(f"not a whole LightGBM model text of {n_features} features")
    else:
        for line in payload.split(b"\n"):
            if line.startswith(b"leaf_value="):
                try:
                    leaves = np.array(line[len(b"leaf_value=") :].split(), dtype=np.float64)
                except ValueError as exc:
                    raise ValueError(f"a LightGBM leaf_value line does not parse ({exc})") from exc
                if not np.isfinite(leaves).all():
                    raise ValueError("the LightGBM model's leaf values are not all finite")


def _no_constant(token: str) -> float:
    raise ValueError(f"the number {token} is not finite")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"the number {text:.40} is not finite")
    return value


def softmax(logits: np.ndarray) -> np.ndarray:
    """Numerically stable softmax of a 1-d array."""
    z = np.asarray(logits, dtype=np.float64)
    e = np.exp(z - z.max())
    return e / e.sum()


def mixture_proba(weights: np.ndarray, member_proba: np.ndarray) -> np.ndarray:
    """P(y = 1) of the mixture: `member_proba` is (n, m), one column per member."""
    return np.asarray(member_proba, dtype=np.float64) @ np.asarray(weights, dtype=np.float64)


def mixture_gradient(weights: np.ndarray, member_proba: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Gradient of the mixture's mean log-loss on rows (`member_proba` (n, m), labels `y`)
    with respect to the mixture logits z (weights = softmax(z)).

    With q_j the probability member j gives the true label and p = sum_j w_j q_j,
    d(-log p)/dz_k = w_k - w_k q_k / p; the mean over rows sums to 0 across members.
    """
    w = np.asarray(weights, dtype=np.float64)
    probs = np.clip(np.asarray(member_proba, dtype=np.float64), _EPS, 1 - _EPS)
    y = np.asarray(y, dtype=np.float64).reshape(-1, 1)
    q = np.where(y > 0.5, probs, 1 - probs)
    p = q @ w
    return (w - (q * w) / p[:, None]).mean(axis=0)


def weight_step(weights: np.ndarray, gradient: np.ndarray, lr: float) -> np.ndarray:
    """One exponentiated-gradient step: w' proportional to w * exp(-lr * gradient)."""
    w = np.clip(np.asarray(weights, dtype=np.float64), _EPS, None)
    return softmax(np.log(w) - lr * np.asarray(gradient, dtype=np.float64))


def personal_weights(
    weights: np.ndarray, member_proba: np.ndarray, y: np.ndarray, lr: float, steps: int
) -> np.ndarray:
    """`weights` refined on one silo's rows: `steps` exponentiated-gradient steps on the
    mixture's mean log-loss there (`mixture_gradient`, `weight_step`), starting from the
    federation's weights so a silo with few rows stays near them."""
    w = np.asarray(weights, dtype=np.float64)
    for _ in range(steps):
        w = weight_step(w, mixture_gradient(w, member_proba, y), lr)
    return w


def padded(vector: np.ndarray) -> np.ndarray:
    """`vector` zero-padded to MAX_MEMBERS (the length of the securely summed gradient)."""
    out = np.zeros(MAX_MEMBERS, dtype=np.float64)
    out[: len(vector)] = vector
    return out
