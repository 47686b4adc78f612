"""The PyTorch model, local training (FedAvg and FedProx) and evaluation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import log_loss, roc_auc_score

from schemas.specs import ModelSpec, TrainingSpec, param_shapes
from silos.exceptions import ModelError
from silos.torch_model import build_model, get_params, set_params
from silos.trainer import evaluate, train_local

LOGREG = ModelSpec(kind="logreg", n_features=4)
MLP = ModelSpec(kind="mlp", n_features=4, hidden=(16, 8))


def separable(n: int = 200, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    X = rng.uniform(-1, 1, size=(n, 4)).astype(np.float32)
    y = (X[:, 0] + 0.5 * X[:, 1] > 0.1).astype(np.float32)
    return X, y


def distance(a: list[np.ndarray], b: list[np.ndarray]) -> float:
    return float(np.sqrt(sum(((x - z) ** 2).sum() for x, z in zip(a, b, strict=True))))


@pytest.mark.parametrize("spec", [LOGREG, MLP])
def test_parameters_match_param_shapes(spec: ModelSpec) -> None:
    model = build_model(spec)
    assert [(k, tuple(v.shape)) for k, v in model.state_dict().items()] == param_shapes(spec)
    params = get_params(model)
    assert [p.shape for p in params] == [s for _, s in param_shapes(spec)]
    assert all(p.dtype == np.float32 for p in params)
    assert model(torch.zeros(3, 4)).shape == (3,)


def test_build_model_is_seeded_and_leaves_global_rng_alone() -> None:
    torch.manual_seed(123)
    expected = torch.rand(1)
    torch.manual_seed(123)
    a, b, c = (get_params(build_model(MLP, seed=s)) for s in (7, 7, 8))
    assert torch.rand(1) == expected
    assert distance(a, b) == 0.0 and distance(a, c) > 0.0


def test_set_params_round_trips_and_checks_shapes() -> None:
    source, target = build_model(MLP, seed=1), build_model(MLP, seed=2)
    set_params(target, get_params(source))
    assert distance(get_params(target), get_params(source)) == 0.0
    params = get_params(source)
    with pytest.raises(ModelError, match="got 5 parameter arrays but the model has 6"):
        set_params(target, params[:-1])
    with pytest.raises(ModelError, match=r"'layers.0.weight' has shape \(16, 3\)"):
        set_params(target, [np.zeros((16, 3), np.float32), *params[1:]])


def test_get_params_returns_copies() -> None:
    model = build_model(LOGREG)
    params = get_params(model)
    params[0][:] = 99.0
    assert not (get_params(model)[0] == 99.0).any()


@pytest.mark.parametrize(
    ("spec", "training"),
    [
        (LOGREG, TrainingSpec(local_epochs=30, batch_size=16, lr=0.5)),
        (MLP, TrainingSpec(local_epochs=30, batch_size=16, lr=0.01, optimizer="adam")),
    ],
)
def test_training_reduces_loss_on_a_separable_problem(
    spec: ModelSpec, training: TrainingSpec
) -> None:
    X, y = separable()
    start = get_params(build_model(spec, seed=0))
    before = evaluate(spec, start, X, y)
    result = train_local(spec, start, X, y, training)
    after = evaluate(spec, result.params, X, y)
    assert result.n_examples == 200 and result.seconds > 0
    assert after.loss < 0.5 * before.loss
    assert after.accuracy >= 0.95
    assert result.loss < 0.5 * before.loss  # the last epoch's mean BCE


def test_training_is_deterministic_given_the_seed() -> None:
    X, y = separable()
    start = get_params(build_model(MLP, seed=3))
    runs = [train_local(MLP, start, X, y, TrainingSpec(seed=s, local_epochs=2)) for s in (5, 5, 6)]
    assert distance(runs[0].params, runs[1].params) == 0.0
    assert runs[0].loss == runs[1].loss
    assert distance(runs[0].params, runs[2].params) > 0.0  # the seed drives the shuffling


def test_fedprox_with_huge_mu_stays_near_the_global_model() -> None:
    X, y = separable()
    start = get_params(build_model(LOGREG, seed=0))
    training = TrainingSpec(local_epochs=5, batch_size=16, lr=0.01)
    free = train_local(LOGREG, start, X, y, training, mu=0.0)
    held = train_local(LOGREG, start, X, y, training, mu=90.0)  # lr * mu < 2 keeps SGD stable
    assert distance(held.params, start) < 0.05 * distance(free.params, start)


def test_evaluate_matches_sklearn() -> None:
    X = np.array([[0.1, 0.9, 0.0, 1.0], [0.8, 0.2, 1.0, 0.0], [0.5, 0.5, 0.5, 0.5],
                  [0.0, 0.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0]], dtype=np.float32)  # fmt: skip
    y = np.array([1, 0, 1, 0, 1], dtype=np.float32)
    weight = np.array([[2.0, -3.0, 1.0, 0.5]], dtype=np.float32)
    bias = np.array([0.1], dtype=np.float32)
    metrics = evaluate(LOGREG, [weight, bias], X, y)
    probs = 1.0 / (1.0 + np.exp(-(X @ weight[0] + bias[0])))
    assert metrics.n_test == 5
    assert metrics.loss == pytest.approx(log_loss(y, probs), rel=1e-5)
    assert metrics.accuracy == pytest.approx(np.mean((probs >= 0.5) == y))
    assert metrics.auc == pytest.approx(roc_auc_score(y, probs))


def test_auc_is_none_for_a_single_class() -> None:
    X, _ = separable(10)
    metrics = evaluate(LOGREG, get_params(build_model(LOGREG)), X, np.ones(10, np.float32))
    assert metrics.auc is None and 0.0 <= metrics.accuracy <= 1.0


def test_arrays_that_do_not_fit_the_spec_are_refused() -> None:
    X, y = separable(20)
    params = get_params(build_model(LOGREG))
    with pytest.raises(ModelError, match=r"expects \(n, 4\)"):
        train_local(LOGREG, params, X[:, :3], y, TrainingSpec())
    with pytest.raises(ModelError, match="labels have shape"):
        evaluate(LOGREG, params, X, y[:-1])
    with pytest.raises(ModelError, match="NaN"):
        evaluate(LOGREG, params, np.full_like(X, np.nan), y)
    with pytest.raises(ModelError, match="0 or 1"):
        evaluate(LOGREG, params, X, y * 2)
