"""A silo's part of a FedBoost ensemble run (`schemas.ensemble`): its member, its weight
gradient, its evaluation and its personal ensemble (the federation's weights refined on its
own validation rows, kept here). Pure functions over the silo's arrays; the handlers
(`silos.handlers.ensemble`) move the results over the wire.
"""

from __future__ import annotations

import base64
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from schemas.ensemble import (
    EnsembleArtifact,
    EnsembledPayload,
    mixture_gradient,
    mixture_proba,
    personal_weights,
)
from schemas.specs import RunSpec
from schemas.task_metrics import score
from schemas.wire import Metrics
from silos.exceptions import ModelError
from silos.files import private_dir, write_private
from silos.local_data import LocalData
from silos.local_models import LocalModel, LocalParams, load_local, train_local

STATE_DIR = "ensemble"  # the silo's personal ensembles, one file per run


def split_validation(
    data: LocalData, fraction: float, seed: int
) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """The silo's training rows split into (fit rows, validation rows), the same way in every
    round of the run (a seeded permutation); at least one row on each side."""
    n = len(data.y_train)
    if n < 2:
        raise ModelError(f"an ensemble member needs at least 2 training rows; this silo has {n}")
    order = np.random.default_rng(seed).permutation(n)
    n_val = min(n - 1, max(1, round(fraction * n)))
    val, fit = order[:n_val], order[n_val:]
    return (data.X_train[fit], data.y_train[fit]), (data.X_train[val], data.y_train[val])


def member_message(spec: RunSpec, kind: str, data: LocalData) -> tuple[bytes, LocalModel]:
    """Train this silo's member on its fit rows; the JSON the members round takes, and the
    model."""
    assert spec.ensemble is not None
    (X, y), _ = split_validation(data, spec.ensemble.val_fraction, spec.training.seed)
    hidden = spec.model.hidden if spec.model is not None and spec.model.hidden else (32,)
    model = train_local(kind, X, y, seed=spec.training.seed, params=LocalParams(hidden=hidden))
    doc = {
        "kind": kind,
        "n_train": len(y),
        "model_b64": base64.b64encode(model.to_bytes()).decode(),
    }
    return json.dumps(doc).encode(), model


@dataclass(frozen=True)
class LoadedEnsemble:
    """An ensemble artifact with its members loaded (each checked against its sha256)."""

    artifact: EnsembleArtifact
    models: list[LocalModel]

    def member_proba(self, X: np.ndarray) -> np.ndarray:
        """(n, m): each member's P(y = 1) on `X` (ModelError naming the member's silo if one
        is not finite: it would make the mixture, its gradient and metrics NaN)."""
        columns = []
        for member, model in zip(self.artifact.members, self.models, strict=True):
            p = np.asarray(model.predict_proba(X), dtype=np.float64)
            if not np.isfinite(p).all():
                raise ModelError(
                    f"the ensemble's member of silo {member.silo!r} gives non-finite "
                    f"probabilities (NaN or infinity) on this silo's rows"
                )
            columns.append(p)
        return np.column_stack(columns)

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        """The mixture's P(y = 1) on `X`."""
        return mixture_proba(np.asarray(self.artifact.weights), self.member_proba(X))

    def own(self, silo: str) -> LocalModel | None:
        """This silo's member (None if it contributed none)."""
        for member, model in zip(self.artifact.members, self.models, strict=True):
            if member.silo == silo:
                return model
        return None


def load_ensemble(payload: bytes) -> LoadedEnsemble:
    """The ensemble in a downloaded model version (ModelError if it is not one, or a member's
    bytes do not match its sha256)."""
    try:
        artifact = EnsembleArtifact.model_validate_json(payload)
    except ValueError as exc:
        raise ModelError(f"the downloaded model is not an ensemble artifact: {exc}") from exc
    models = []
    for m in artifact.members:
        try:
            models.append(load_local(m.kind, m.model_bytes()))
        except (ValueError, ModelError) as exc:
            raise ModelError(f"the ensemble's member of silo {m.silo!r}: {exc}") from exc
    return LoadedEnsemble(artifact, models)


def weight_gradient(
    spec: RunSpec, ensemble: LoadedEnsemble, data: LocalData
) -> tuple[np.ndarray, Metrics]:
    """The mixture log-loss gradient w.r.t. its logits on this silo's validation rows, and the
    ensemble's metrics there."""
    assert spec.ensemble is not None
    _, (X, y) = split_validation(data, spec.ensemble.val_fraction, spec.training.seed)
    probs = ensemble.member_proba(X)
    weights = np.asarray(ensemble.artifact.weights)
    metrics = Metrics(n_test=len(y), **score("binary", y, mixture_proba(weights, probs)))  # type: ignore[arg-type]
    return mixture_gradient(weights, probs, y), metrics


def personal_ensemble(spec: RunSpec, ensemble: LoadedEnsemble, data: LocalData) -> LoadedEnsemble:
    """The federation's ensemble with its weights refined on this silo's validation rows
    (`schemas.ensemble.personal_weights`, `ensemble.personal_steps` steps at `ensemble.lr`)."""
    assert spec.ensemble is not None
    _, (X, y) = split_validation(data, spec.ensemble.val_fraction, spec.training.seed)
    w = personal_weights(
        np.asarray(ensemble.artifact.weights),
        ensemble.member_proba(X),
        y,
        spec.ensemble.lr,
        spec.ensemble.personal_steps,
    )
    artifact = ensemble.artifact.model_copy(update={"weights": [float(x) for x in w]})
    return LoadedEnsemble(artifact, ensemble.models)


def save_personal(workspace: Path, run_id: str, personal: LoadedEnsemble) -> tuple[Path, str]:
    """Keep the personal ensemble (members and weights, the artifact's JSON) in the silo's
    workspace, owner-only; it never leaves the silo. Its path and sha256."""
    data = personal.artifact.model_dump_json().encode()
    path = private_dir(workspace / STATE_DIR) / f"{run_id}.personal.json"
    write_private(path, data)
    return path, hashlib.sha256(data).hexdigest()


def evaluate(
    silo: str,
    round_num: int,
    ensemble: LoadedEnsemble,
    sha256: str,
    data: LocalData,
    personal: tuple[LoadedEnsemble, str] | None = None,
) -> tuple[Metrics, EnsembledPayload]:
    """The final ensemble, this silo's member alone and (if given, with its sha256) its
    personal ensemble on the silo's held-out rows."""
    X, y = data.X_test, data.y_test
    ens = score("binary", y, ensemble.predict_proba(X))
    own = ensemble.own(silo)
    alone = score("binary", y, own.predict_proba(X)) if own is not None else None
    mine = score("binary", y, personal[0].predict_proba(X)) if personal is not None else None
    statement = EnsembledPayload(
        silo=silo,
        round=round_num,
        ensemble_sha256=sha256,
        member_sha256=own.sha256 if own is not None else None,
        n_test=len(y),
        ensemble_auc=ens["auc"],
        member_auc=alone["auc"] if alone else None,
        ensemble_loss=float(ens["loss"] or 0.0),
        member_loss=alone["loss"] if alone else None,
        personal_sha256=personal[1] if personal is not None else None,
        personal_auc=mine["auc"] if mine else None,
        personal_loss=mine["loss"] if mine else None,
    )
    return Metrics(n_test=len(y), **ens), statement  # type: ignore[arg-type]
