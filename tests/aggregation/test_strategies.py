"""Strategies against plain numpy references, plus hypothesis properties of aggregation."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from aggregation.strategies import make_strategy
from aggregation.strategies.aggregate import weighted_mean
from schemas.specs import StrategySpec


def _params(seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.normal(size=(4, 3)).astype(np.float32), rng.normal(size=3).astype(np.float32)]


def test_weighted_mean_matches_np_average() -> None:
    updates = [_params(i) for i in range(5)]
    weights = [3, 1, 10, 7, 2]
    got = weighted_mean(updates, weights)
    for i, g in enumerate(got):
        ref = np.average(np.stack([u[i] for u in updates]), axis=0, weights=weights)
        np.testing.assert_allclose(g, ref, rtol=1e-6, atol=1e-6)


@settings(max_examples=50, deadline=None)
@given(
    st.lists(
        arrays(np.float32, (6,), elements=st.floats(-100, 100, width=32)), min_size=1, max_size=8
    ),
    st.data(),
)
def test_aggregate_does_not_depend_on_update_order(vectors, data) -> None:  # type: ignore[no-untyped-def]
    weights = data.draw(
        st.lists(st.integers(1, 1000), min_size=len(vectors), max_size=len(vectors))
    )
    order = data.draw(st.permutations(range(len(vectors))))
    a = weighted_mean([[v] for v in vectors], weights)[0]
    b = weighted_mean([[vectors[i]] for i in order], [weights[i] for i in order])[0]
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-4)


def test_weighted_mean_refuses_empty_or_zero_weight() -> None:
    with pytest.raises(ValueError, match="no updates"):
        weighted_mean([], [])
    with pytest.raises(ValueError, match="positive"):
        weighted_mean([_params(0)], [0])


@pytest.mark.parametrize("name", ["fedavg", "fedprox"])
def test_fedavg_and_fedprox_step(name: str) -> None:
    spec = StrategySpec(name=name, server_lr=0.5, mu=0.1 if name == "fedprox" else 0.0)
    w, d = _params(1), _params(2)
    new, state = make_strategy(spec).apply(w, d, {})
    for wi, di, ni in zip(w, d, new, strict=True):
        np.testing.assert_allclose(ni, wi + 0.5 * di, rtol=1e-6)
    assert state == {}
    assert make_strategy(spec).local_proximal_mu() == (0.1 if name == "fedprox" else 0.0)


def _reference_fedopt(name: str, w, deltas, lr, b1, b2, tau):  # type: ignore[no-untyped-def]
    """Reddi et al. 2021, Algorithm 2, written out for one flat vector."""
    m = np.zeros_like(w, dtype=np.float64)
    v = np.zeros_like(w, dtype=np.float64)
    x = w.astype(np.float64)
    for d in deltas:
        m = b1 * m + (1 - b1) * d
        if name == "fedadam":
            v = b2 * v + (1 - b2) * d**2
        elif name == "fedyogi":
            v = v - (1 - b2) * d**2 * np.sign(v - d**2)
        else:
            v = v + d**2
        x = x + lr * m / (np.sqrt(v) + tau)
    return x


@pytest.mark.parametrize("name", ["fedadam", "fedyogi", "fedadagrad"])
def test_server_optimizers_match_reference_over_rounds(name: str) -> None:
    spec = StrategySpec(name=name, server_lr=0.1, beta1=0.9, beta2=0.99, tau=1e-3)
    strategy = make_strategy(spec)
    rng = np.random.default_rng(7)
    w = rng.normal(size=5).astype(np.float32)
    rounds = [rng.normal(size=5).astype(np.float32) for _ in range(6)]
    params, state = [w], {}
    for d in rounds:
        params, state = strategy.apply(params, [d], state)
        assert set(state) == {"m.0", "v.0"}
    ref = _reference_fedopt(name, w, rounds, 0.1, 0.9, 0.99, 1e-3)
    np.testing.assert_allclose(params[0], ref, rtol=1e-4, atol=1e-5)
