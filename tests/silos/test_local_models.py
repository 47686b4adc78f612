"""One local model of each kind: it learns, its bytes round-trip to the same predictions and
hash, the same seed gives the same bytes, soft targets train it, and bad input is refused."""

from __future__ import annotations

import numpy as np
import pytest

from silos.exceptions import ModelError
from silos.local_models import LOCAL_KINDS, LocalParams, load_local, train_local

FAST = LocalParams(hidden=(8,), epochs=15, lr=0.05, n_trees=15)


def _rows(n: int = 200, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 5)).astype(np.float32)
    y = (X[:, 0] - X[:, 1] + 0.3 * rng.normal(size=n) > 0).astype(np.float32)
    return X, y


@pytest.mark.parametrize("kind", LOCAL_KINDS)
def test_each_kind_learns_and_round_trips(kind: str) -> None:
    X, y = _rows()
    model = train_local(kind, X, y, seed=3, params=FAST)
    p = model.predict_proba(X)
    assert p.shape == (len(y),) and p.dtype == np.float64 and ((p >= 0) & (p <= 1)).all()
    assert np.mean((p > 0.5) == y) > 0.85
    data = model.to_bytes()
    again = load_local(kind, data)
    np.testing.assert_allclose(again.predict_proba(X), p, atol=1e-6)
    assert again.sha256 == model.sha256
    assert train_local(kind, X, y, seed=3, params=FAST).to_bytes() == data  # deterministic


@pytest.mark.parametrize("kind", LOCAL_KINDS)
def test_soft_targets_train_without_hard_labels(kind: str) -> None:
    X, y = _rows()
    soft = np.where(y == 1, 0.7, 0.3)
    model = train_local(kind, X, None, soft=soft, seed=0, params=FAST)
    p = model.predict_proba(X)
    assert np.mean((p > 0.5) == y) > 0.8
    # trained toward 0.3 / 0.7, the predictions stay far from the hard 0 and 1
    assert 0.05 < np.median(p[y == 0]) < 0.5 < np.median(p[y == 1]) < 0.95


def test_bad_input_is_refused_with_what_is_wrong() -> None:
    X, y = _rows(20)
    with pytest.raises(ModelError, match="unknown local model kind 'svm'"):
        train_local("svm", X, y)
    with pytest.raises(ModelError, match="labels must be 0 or 1"):
        train_local("logreg", X, y * 0.5 + 0.2)
    with pytest.raises(ModelError, match=r"soft targets must lie in \[0, 1\]"):
        train_local("logreg", X, None, soft=y * 2)
    with pytest.raises(ModelError, match="needs labels y or soft targets"):
        train_local("logreg", X, None)
    bad = X.copy()
    bad[0, 0] = np.nan
    with pytest.raises(ModelError, match="NaN or infinity"):
        train_local("xgboost", bad, y)
    model = train_local("lightgbm", X, y, params=FAST)
    with pytest.raises(ModelError, match="expected a xgboost model, the bytes hold a 'lightgbm'"):
        load_local("xgboost", model.to_bytes())
    with pytest.raises(ModelError, match="not a fedsilo-local-model/1 model"):
        load_local("logreg", b"garbage")
    with pytest.raises(ModelError, match="features have shape"):
        model.predict_proba(X[:, :3])
