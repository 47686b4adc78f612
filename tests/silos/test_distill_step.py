"""A silo's distillation step: its own kind of model, learning from published soft labels."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from schemas import tensors
from schemas.distill import SOFT_LABELS, DistillSpec
from schemas.specs import ModelSpec, RunSpec
from silos.distill import decode_soft_labels, distill_step
from silos.exceptions import ModelError
from silos.local_models import train_local


def _rows(seed: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 5)).astype(np.float32)
    y = (X[:, 0] + 0.5 * rng.normal(size=n) > 0).astype(np.float32)
    return X, y


def _spec(kind: str, *weights: float, gate: float = 0.0) -> RunSpec:
    """A distillation run; `gate` is `min_confidence` (0 here: the argmin as it is)."""
    return RunSpec(
        federation="f",
        dataset="d",
        model=ModelSpec(kind="mlp", n_features=5, hidden=(4,)),
        federation_statistics=True,
        distill=DistillSpec(
            kinds={"default": kind},
            reference_rows=16,
            weights=weights or (1.0,),
            min_confidence=gate,
        ),
    )


@pytest.mark.parametrize("kind", ["logreg", "xgboost"])
def test_without_soft_labels_the_model_is_the_one_trained_alone(kind: str) -> None:
    train, test, X_ref = _rows(0, 120), _rows(1, 60), _rows(2, 40)[0]
    out = distill_step(_spec(kind), "s1", train, test, X_ref, None)
    assert out.kind == kind and out.n_train == 120
    assert out.distilled == out.alone
    assert out.reference_predictions.shape == (40,)
    assert ((out.reference_predictions >= 0) & (out.reference_predictions <= 1)).all()
    assert out.alone.auc is not None and out.alone.auc > 0.7  # the rows are learnable


@pytest.mark.parametrize("kind", ["logreg", "mlp", "xgboost", "lightgbm"])
def test_soft_labels_pull_the_model_toward_the_federation(kind: str) -> None:
    """Reference rows labelled 'positive' by the federation raise the silo's P(y=1) there; with
    weight 0 the silo ignores them and keeps the model it trains alone."""
    train, test, X_ref = _rows(0, 120), _rows(1, 60), _rows(2, 200)[0]
    soft = np.ones(len(X_ref))
    alone = distill_step(_spec(kind), "s1", train, test, X_ref, None)
    pulled = distill_step(_spec(kind, 3.0), "s1", train, test, X_ref, soft)
    assert pulled.model.sha256 != alone.model.sha256
    assert pulled.reference_predictions.mean() > alone.reference_predictions.mean() + 0.1
    assert pulled.alone == alone.alone  # the baseline does not depend on the soft labels
    ignored = distill_step(_spec(kind, 0.0), "s1", train, test, X_ref, soft)
    assert ignored.model.sha256 == alone.model.sha256
    assert (pulled.weight, ignored.weight, alone.weight) == (3.0, 0.0, None)
    assert pulled.validation == ()  # a one-weight grid is not validated


@pytest.mark.parametrize("kind", ["logreg", "xgboost"])
def test_a_silo_whose_soft_labels_are_noise_keeps_its_model_alone(kind: str) -> None:
    """Soft labels that say nothing about the rows lose on the silo's validation rows to
    training alone: the silo picks weight 0 and its model is the one trained alone, exactly."""
    train, test, X_ref = _rows(0, 160), _rows(1, 60), _rows(2, 300)[0]
    noise = np.random.default_rng(9).uniform(size=len(X_ref))
    out = distill_step(_spec(kind, 0.0, 0.25, 0.5, 1.0), "s1", train, test, X_ref, noise)
    assert out.weight == 0.0
    assert [w for w, _ in out.validation] == [0.0, 0.25, 0.5, 1.0]
    assert (
        out.model.sha256 == distill_step(_spec(kind), "s1", train, test, X_ref, None).model.sha256
    )
    assert out.distilled == out.alone


@pytest.mark.parametrize(
    ("kind", "truthful", "n", "seed"),
    # (logreg, 24 rows, seed 2) chooses 0.5 and (mlp, 24, 2) 1.0: the choice is not always 0
    [
        ("logreg", True, 24, 2),
        ("logreg", False, 140, 1),
        ("mlp", True, 24, 2),
        ("xgboost", True, 140, 3),
    ],
)
def test_the_chosen_weight_is_the_direct_argmin_of_validation_loss(
    kind: str, truthful: bool, n: int, seed: int
) -> None:
    """Recomputed by hand: split the silo's rows as `split_rows` does, train every weight with
    the row weighting the docstring states, score log-loss on the held-back rows, take the
    smallest weight of the lowest loss; the silo's choice and its losses match."""
    from schemas.task_metrics import score
    from silos.distill import member_params
    from silos.personalize import split_rows

    train, test, X_ref = _rows(seed, n), _rows(seed + 50, 60), _rows(seed + 100, 200)[0]
    # soft labels from the rule the rows follow or from noise
    soft = (
        1 / (1 + np.exp(-4 * X_ref[:, 0]))
        if truthful
        else np.random.default_rng(seed).uniform(size=len(X_ref))
    )
    spec = _spec(kind, 1.0, 0.0, 0.5)
    out = distill_step(spec, "s1", train, test, X_ref, soft)
    rows = split_rows("binary", *train, test[0][:0], test[1][:0], 0.25, spec.training.seed)
    params = member_params(spec)
    direct = []
    for w in (0.0, 0.5, 1.0):
        if w == 0:
            model = train_local(
                kind, rows.X_fit, rows.y_fit, seed=spec.training.seed, params=params
            )
        else:
            n, m = len(rows.y_fit), len(X_ref)
            steps = max(1, round(params.epochs * n / (n + m)))
            model = train_local(
                kind,
                np.concatenate([rows.X_fit, X_ref]).astype(np.float32),
                None,
                soft=np.concatenate([rows.y_fit.astype(np.float64), soft]),
                seed=spec.training.seed,
                params=replace(params, epochs=steps),
                weight=np.concatenate([np.ones(n), np.full(m, w * n / m)]),
            )
        loss = score("binary", rows.y_val, model.predict_proba(rows.X_val))["loss"]
        direct.append((w, loss))
    np.testing.assert_allclose([v for _, v in out.validation], [v for _, v in direct], rtol=1e-9)
    lowest = min(v for _, v in direct)
    assert out.weight == min(w for w, v in direct if v == lowest)


@pytest.mark.parametrize("kind", ["logreg", "xgboost"])
def test_the_gate_keeps_the_model_alone_on_too_few_rows(kind: str) -> None:
    """Truthful soft labels on a silo of 24 rows win the argmin on its 6 held-back rows, but
    fewer than 5 rows of a class cannot show a gain: the gate keeps the model trained alone."""
    X_ref = _rows(102, 200)[0]
    soft = 1 / (1 + np.exp(-4 * X_ref[:, 0]))
    small, test = _rows(2, 24), _rows(52, 60)
    free = distill_step(_spec(kind, 0.0, 0.5, 1.0), "s1", small, test, X_ref, soft)
    gated = distill_step(_spec(kind, 0.0, 0.5, 1.0, gate=0.95), "s1", small, test, X_ref, soft)
    assert free.weight is not None and free.weight > 0
    assert gated.weight == 0.0 and gated.distilled == gated.alone
    assert gated.validation == free.validation  # the same candidates, scored alike
    assert gated.confidence == 0.0 and free.confidence is None


def test_the_gate_keeps_a_gain_that_holds() -> None:
    """100 rows with 30% of their labels flipped: XGBoost alone overfits the noise, and the
    federation's soft labels cut its held-back log-loss from 0.84 to 0.56, with confidence."""
    X_ref = _rows(102, 200)[0]
    soft = 1 / (1 + np.exp(-4 * X_ref[:, 0]))
    X, y = _rows(3, 100)
    flip = np.random.default_rng(10).random(len(y)) < 0.3
    y = np.where(flip, 1 - y, y).astype(np.float32)
    out = distill_step(
        _spec("xgboost", 0.0, 0.5, 1.0, gate=0.95), "s1", (X, y), _rows(52, 60), X_ref, soft
    )
    assert out.weight == 1.0 and out.distilled != out.alone
    assert out.confidence is not None and out.confidence >= 0.95


def test_unit_row_weights_change_nothing_and_bad_weights_are_refused() -> None:
    X, y = _rows(0, 80)
    for kind in ("logreg", "xgboost"):
        plain = train_local(kind, X, y, seed=1)
        assert train_local(kind, X, y, seed=1, weight=np.ones(80)).sha256 == plain.sha256
    with pytest.raises(ModelError, match="row weights"):
        train_local("logreg", X, y, weight=np.ones(3))
    with pytest.raises(ModelError, match="row weights"):
        train_local("xgboost", X, y, weight=-np.ones(80))


def test_published_soft_labels_are_checked() -> None:
    good = tensors.encode({SOFT_LABELS: np.full(4, 0.25, np.float32)})
    np.testing.assert_allclose(decode_soft_labels(good, 4), 0.25)
    with pytest.raises(ModelError, match="do not fit 5 reference rows"):
        decode_soft_labels(good, 5)
    bad = tensors.encode({SOFT_LABELS: np.array([0.1, 2.0], np.float32)})
    with pytest.raises(ModelError, match=r"\[0, 1\]"):
        decode_soft_labels(bad, 2)
    with pytest.raises(ModelError, match="reference rows"):
        distill_step(
            _spec("logreg"), "s1", _rows(0, 50), _rows(1, 20), np.zeros((3, 5)), np.ones(4)
        )


def test_a_silo_policy_decides_which_kind_it_trains(tmp_path: Path) -> None:
    from silos.config import load_silo_config
    from silos.policy import policy_violation

    toml = (
        '[silo]\nname = "cleveland"\nfederation = "heart"\nworkspace = "ws"\n\n'
        '[data]\npath = "data.csv"\ncontract = "heart_disease"\n\n'
        '[service]\nurls = ["http://127.0.0.1:8700"]\n\n'
        '[policy]\nallowed_models = ["logreg"]\n\n[policy.trees]\nallowed_kinds = ["lightgbm"]\n'
    )
    (tmp_path / "silo.toml").write_text(toml)
    cfg = load_silo_config(tmp_path / "silo.toml")
    base = _spec("logreg").model_copy(update={"dataset": "heart_disease"})
    assert policy_violation(cfg, base, 5) is None
    lgb = DistillSpec(kinds={"default": "logreg", "cleveland": "lightgbm"})
    assert policy_violation(cfg, base.model_copy(update={"distill": lgb}), 5) is None
    for kind in ("xgboost", "mlp"):
        asked = DistillSpec(kinds={"default": "logreg", "cleveland": kind})
        refusal = policy_violation(cfg, base.model_copy(update={"distill": asked}), 5) or ""
        assert f"asks it to train {kind!r}" in refusal and "cleveland" in refusal


def test_the_gate_keeps_the_model_alone_when_a_class_has_no_validation_rows() -> None:
    """One negative among 40 rows: split_rows holds none back, so the validation rows are all
    positive. Soft labels that say 'positive' everywhere lower the loss on them, but with no
    negative to weigh that is no evidence (it was certified at confidence 1.0)."""
    X, y = _rows(0, 40)
    y[:] = 1
    y[0] = 0
    X_ref = _rows(102, 200)[0]
    spec = _spec("xgboost", 0.0, 0.5, 1.0, gate=0.95)
    out = distill_step(spec, "s1", (X, y), _rows(52, 60), X_ref, np.full(len(X_ref), 0.97))
    assert min(out.validation, key=lambda wl: wl[1])[0] > 0  # the argmin is a soft-label weight
    assert out.weight == 0.0 and out.confidence == 0.0
    assert out.distilled == out.alone
