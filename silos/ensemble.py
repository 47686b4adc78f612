"""A silo's part of a FedBoost ensemble run (`schemas.ensemble`): its member, its weight
gradient, its evaluation and its personal ensemble (the federation's weights refined on its
own validation rows, kept here). Pure functions over the silo's arrays; the handlers
(`silos.handlers.ensemble`) move the results over the wire.

The validation rows (and the held-out rows) are drawn from the silo's table as it is in each
round, by row position. The silo's member is trained once, in the members round, so once the
table changes (rows added, or the same rows exported in another order) those rows are no longer
the ones its member never saw: the silo records the table's fingerprint with its member
(`keep_member_table`) and declines the later rounds while the table differs
(`check_member_table`). Drawing the rows by content instead would still leave the held-out
rows, drawn by position for every kind of run (`silos.data.split_train_test`), overlapping the
member's fit rows, and the rows' encoding moves with the federation's statistics.
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
from silos.exceptions import DataError, ModelError
from silos.files import private_dir, write_private
from silos.local_data import LocalData
from silos.local_models import LocalModel, LocalParams, load_local, train_local
from silos.personalize import split_rows
from silos.personalize_gate import MIN_GROUP_ROWS

STATE_DIR = "ensemble"  # the silo's personal ensembles and member tables, per run


def split_validation(
    data: LocalData, fraction: float, seed: int
) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """The silo's training rows split into (fit rows, validation rows), the same way in every
    round of the run while its table is the same: per class, seeded, at least one row of each
    class on both sides where the class has two (`silos.personalize.split_rows`); a small
    silo's validation rows drawn at random are often of one class."""
    n = len(data.y_train)
    if n < 2:
        raise ModelError(f"an ensemble member needs at least 2 training rows; this silo has {n}")
    d = data
    rows = split_rows("binary", d.X_train, d.y_train, d.X_test, d.y_test, fraction, seed)
    return (rows.X_fit, rows.y_fit), (rows.X_val, rows.y_val)


def member_message(spec: RunSpec, kind: str, data: LocalData) -> tuple[bytes, LocalModel]:
    """Train this silo's member on its fit rows; the JSON the members round takes, and the
    model.

    Raises
    ------
    DataError
        The fit rows hold one class: a member fit on them predicts a constant (the silo
        declines the members round, `silos.decline`).
    """
    assert spec.ensemble is not None
    (X, y), _ = split_validation(data, spec.ensemble.val_fraction, spec.training.seed)
    present = np.unique(y)
    if len(present) < 2:
        raise DataError(
            f"this silo's {len(y)} fit rows are all of class {present[0]:g}: a member fit on "
            "them would predict a constant, so it contributes none"
        )
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
    (`schemas.ensemble.personal_weights`, `ensemble.personal_steps` steps at `ensemble.lr`);
    the federation's weights as they are unless each class has MIN_GROUP_ROWS validation rows
    (`silos.personalize_gate`): steps on a few rows of one class put the weight on whichever
    member predicts that class most confidently, a constant one included."""
    assert spec.ensemble is not None
    _, (X, y) = split_validation(data, spec.ensemble.val_fraction, spec.training.seed)
    if min((y == 0).sum(), (y == 1).sum()) < MIN_GROUP_ROWS:
        return ensemble
    w = personal_weights(
        np.asarray(ensemble.artifact.weights),
        ensemble.member_proba(X),
        y,
        spec.ensemble.lr,
        spec.ensemble.personal_steps,
    )
    artifact = ensemble.artifact.model_copy(update={"weights": [float(x) for x in w]})
    return LoadedEnsemble(artifact, ensemble.models)


def keep_member_table(workspace: Path, run_id: str, member_sha256: str, data: LocalData) -> None:
    """Record, before the member is sent, the fingerprint of the table it was trained on."""
    path = private_dir(workspace / STATE_DIR) / f"{run_id}.members.json"
    kept = json.loads(path.read_bytes()) if path.exists() else {}
    kept[member_sha256] = data.data_sha256  # by sha256: a retried member round's too
    write_private(path, json.dumps(kept, sort_keys=True).encode(), durable=True)


def check_member_table(
    workspace: Path, run_id: str, ensemble: LoadedEnsemble, data: LocalData
) -> None:
    """Decline (DataError) when this silo's member in `ensemble` was trained on another table
    than the one it holds now: its validation and held-out rows, drawn by position from the
    table as it is, would include rows its member was fit on. Nothing to check for a silo with
    no member recorded in its workspace.
    """
    path = workspace / STATE_DIR / f"{run_id}.members.json"
    kept = json.loads(path.read_bytes()) if path.exists() else {}
    now = data.data_sha256
    for member in ensemble.artifact.members:
        then = kept.get(member.sha256)
        if then is not None and then != now:
            raise DataError(
                f"this silo's table changed since its ensemble member was trained (fingerprint "
                f"{then[:12]}… then, {now[:12]}… now; rows added, or the same "
                "rows in another order): its validation and held-out rows would include rows "
                "its member was fit on, so it sits this round out until the table is restored"
            )


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
