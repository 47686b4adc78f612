"""The ensemble's weight arithmetic (against finite differences and a known optimum), the
artifact's hash check, and the run specs an ensemble refuses."""

from __future__ import annotations

import base64
import hashlib

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from pydantic import ValidationError

from schemas.ensemble import (
    LOCAL_FORMAT,
    MAX_MEMBERS,
    EnsembleSpec,
    Member,
    check_member_bytes,
    mixture_gradient,
    mixture_proba,
    padded,
    softmax,
    weight_step,
)
from schemas.specs import (
    AsyncSpec,
    ModelSpec,
    PersonalizationSpec,
    PrivacySpec,
    RunSpec,
    SecureAggregationSpec,
    StrategySpec,
)

probs = st.integers(2, 5).flatmap(
    lambda m: st.tuples(
        arrays(np.float64, (7, m), elements=st.floats(0.01, 0.99)),
        arrays(np.float64, m, elements=st.floats(-3, 3)),
        arrays(np.int64, 7, elements=st.integers(0, 1)),
    )
)


def _loss(logits: np.ndarray, p: np.ndarray, y: np.ndarray) -> float:
    mix = mixture_proba(softmax(logits), p)
    return float(-np.mean(y * np.log(mix) + (1 - y) * np.log(1 - mix)))


@given(probs)
@settings(max_examples=40, deadline=None)
def test_gradient_matches_finite_differences(case: tuple[np.ndarray, ...]) -> None:
    p, logits, y = case
    grad = mixture_gradient(softmax(logits), p, y)
    h = 1e-6
    numeric = [
        (_loss(logits + h * e, p, y) - _loss(logits - h * e, p, y)) / (2 * h)
        for e in np.eye(len(logits))
    ]
    np.testing.assert_allclose(grad, numeric, atol=1e-6)
    assert grad.sum() == pytest.approx(0.0, abs=1e-9)  # softmax logits: shifts change nothing


@given(probs, st.floats(0.01, 10))
@settings(max_examples=40, deadline=None)
def test_a_step_stays_on_the_simplex_and_lowers_the_loss(
    case: tuple[np.ndarray, ...], lr: float
) -> None:
    p, logits, y = case
    w = softmax(logits)
    new = weight_step(w, mixture_gradient(w, p, y), lr=min(lr, 0.05))
    assert new.sum() == pytest.approx(1.0) and (new > 0).all()
    before = _loss(np.log(w), p, y)
    assert _loss(np.log(new), p, y) <= before + 1e-9


def test_steps_move_the_weight_to_the_member_that_predicts_well() -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 400)
    good = np.where(y == 1, 0.8, 0.2)
    noise = rng.uniform(0.05, 0.95, 400)
    p = np.column_stack([noise, good, 1 - good])  # the third is confidently wrong
    w = np.full(3, 1 / 3)
    for _ in range(50):
        w = weight_step(w, mixture_gradient(w, p, y), lr=4.0)
    assert w[1] > 0.95 and w[2] < 0.01


def test_padding_keeps_the_members_first() -> None:
    v = padded(np.array([0.5, -0.5]))
    assert v.shape == (MAX_MEMBERS,) and list(v[:3]) == [0.5, -0.5, 0.0]


def test_a_member_whose_bytes_do_not_match_its_hash_is_refused() -> None:
    data = b'{"format": "x"}\nbody'
    good = Member(
        silo="a",
        kind="logreg",
        sha256=hashlib.sha256(data).hexdigest(),
        n_train=3,
        model_b64=base64.b64encode(data).decode(),
    )
    assert good.model_bytes() == data
    bad = good.model_copy(update={"model_b64": base64.b64encode(data + b"!").decode()})
    with pytest.raises(ValueError, match="member of silo 'a' does not match its sha256"):
        bad.model_bytes()


def test_kinds_need_a_default_and_real_silo_names() -> None:
    spec = EnsembleSpec(kinds={"default": "mlp", "va_long_beach": "xgboost"})
    assert spec.kind_for("va_long_beach") == "xgboost"
    # a display name with spaces is no silo name (schemas.wire.NAME_PATTERN): refused
    with pytest.raises(ValidationError, match=r"cannot exist: \['VA Long Beach'\].*no spaces"):
        EnsembleSpec(kinds={"default": "mlp", "VA Long Beach": "xgboost"})
    assert EnsembleSpec().kind_for("anyone") == "xgboost"
    with pytest.raises(ValidationError, match='needs a "default" kind'):
        EnsembleSpec(kinds={"a": "mlp"})
    with pytest.raises(ValidationError, match="names silos that cannot exist"):
        EnsembleSpec(kinds={"default": "mlp", "../x": "mlp"})
    with pytest.raises(ValidationError):
        EnsembleSpec(kinds={"default": "svm"})  # type: ignore[dict-item]


BASE = {
    "federation": "f",
    "dataset": "d",
    "model": ModelSpec(kind="logreg", n_features=3),
    "rounds": 3,
    "ensemble": EnsembleSpec(),
}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"privacy": PrivacySpec(noise_multiplier=1.0, clip_norm=1.0)}, "differential privacy"),
        ({"asynchronous": AsyncSpec(buffer_size=2)}, "asynchronous rounds"),
        ({"personalize": PersonalizationSpec()}, "personalize"),
        ({"strategy": StrategySpec(name="scaffold")}, "strategy 'scaffold'"),
        ({"secure_aggregation": SecureAggregationSpec(enabled=False)}, "secure_aggregation"),
        ({"rounds": 1}, "rounds >= 2"),
        (
            {"model": ModelSpec(kind="logreg", n_features=3, task="multiclass", n_outputs=3)},
            "binary tasks only",
        ),
    ],
)
def test_an_ensemble_refuses_what_makes_no_sense(change: dict[str, object], message: str) -> None:
    RunSpec(**BASE)  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match=message):
        RunSpec(**{**BASE, **change})  # type: ignore[arg-type]


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_member_parameters_must_be_finite(bad: float) -> None:
    """A NaN or infinite parameter (float32 little-endian, as silos write them) is refused:
    stored, it would make every silo's mixture and weight round non-finite."""
    head = b'{"format": "%s", "kind": "logreg", "n_features": 3}' % LOCAL_FORMAT.encode()
    params = np.array([0.5, -1.0, 2.0, 0.1], "<f4")
    check_member_bytes(head + b"\n" + params.tobytes(), "logreg", 3)
    params[2] = bad
    with pytest.raises(ValueError, match="not all finite"):
        check_member_bytes(head + b"\n" + params.tobytes(), "logreg", 3)
