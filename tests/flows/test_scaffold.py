"""SCAFFOLD: the strategy's arithmetic, the silo's control variate, and the spec's refusals.

The convergence case: two silos whose features have different scales (different curvatures)
and different optima, full-batch local steps. FedAvg's fixed point is off the pooled least
squares solution (client drift); SCAFFOLD's drift correction reaches it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from aggregation.strategies import make_strategy
from aggregation.strategies.aggregate import weighted_mean
from aggregation.strategies.scaffold import control_of
from flows.demo import DemoOptions, demo_spec
from flows.exceptions import DemoError
from schemas.contracts.loader import load_contract
from schemas.specs import (
    AsyncSpec,
    ModelSpec,
    PrivacySpec,
    RunSpec,
    StrategySpec,
    TrainingSpec,
    param_shapes,
    update_shapes,
)
from silos import scaffold
from silos.features import FeaturePipeline
from silos.trainer import train_local

MODEL = ModelSpec(kind="logreg", n_features=2, task="regression")  # linear regression
TRAINING = TrainingSpec(local_epochs=10, batch_size=1000, lr=0.2)  # 10 full-batch steps a round
Silo = tuple[np.ndarray, np.ndarray]


def _silos() -> list[Silo]:
    rng = np.random.default_rng(0)
    out = []
    for scale, w, n in [((1.0, 0.2), (2.0, -1.0), 40), ((0.2, 1.0), (-1.0, 3.0), 120)]:
        X = (rng.normal(size=(n, 2)) * scale).astype(np.float32)
        y = (X @ np.array(w) + rng.normal(scale=0.1, size=n)).astype(np.float32)
        out.append((X, y))
    return out


def _pooled_optimum(silos: list[Silo]) -> np.ndarray:
    X = np.concatenate([x for x, _ in silos])
    y = np.concatenate([t for _, t in silos])
    return np.linalg.lstsq(np.hstack([X, np.ones((len(X), 1))]), y, rcond=None)[0]


def _federate(name: str, silos: list[Silo], rounds: int = 30) -> np.ndarray:
    """`rounds` rounds as the agent and the service run them (silos.scaffold, the strategy)."""
    strategy = make_strategy(StrategySpec(name=name))  # type: ignore[arg-type]
    params = [np.zeros(shape, np.float32) for _, shape in param_shapes(MODEL)]
    state: dict[str, np.ndarray] = {}
    own = [[np.zeros_like(p) for p in params] for _ in silos]
    for _ in range(rounds):
        c, updates = control_of(state, params), []
        for k, (X, y) in enumerate(silos):
            if name == "scaffold":
                step = scaffold.corrected_training(MODEL, params, X, y, TRAINING, c, own[k])
                own[k] = step.control
                new, tail = step.params, step.control_delta
            else:
                new, tail = train_local(MODEL, params, X, y, TRAINING).params, []
            updates.append([a - b for a, b in zip(new, params, strict=True)] + tail)
        mean = weighted_mean(updates, [len(y) for _, y in silos])
        params, state = strategy.apply(params, mean, state)
    return np.concatenate([p.ravel() for p in params])


def test_scaffold_reaches_the_pooled_optimum_where_fedavg_drifts() -> None:
    silos = _silos()
    optimum = _pooled_optimum(silos)
    fedavg = np.abs(_federate("fedavg", silos) - optimum).max()
    scaffold_error = np.abs(_federate("scaffold", silos) - optimum).max()
    assert fedavg > 0.1, fedavg  # client drift: FedAvg settles elsewhere
    assert scaffold_error < 1e-3, scaffold_error


def test_strategy_moves_the_model_as_fedavg_and_c_by_the_participation() -> None:
    params = [np.ones((2, 3), np.float32), np.zeros(2, np.float32)]
    model_delta = [np.full((2, 3), 0.5, np.float32), np.array([1.0, -1.0], np.float32)]
    control_delta = [np.full((2, 3), 2.0, np.float32), np.array([4.0, 8.0], np.float32)]
    state = {"control.0": np.ones((2, 3), np.float32), "control.1": np.zeros(2, np.float32)}
    strategy = make_strategy(StrategySpec(name="scaffold"))
    new, new_state = strategy.apply_round(params, model_delta + control_delta, state, 0.5)
    np.testing.assert_allclose(new[0], 1.5)
    np.testing.assert_allclose(new[1], [1.0, -1.0])
    np.testing.assert_allclose(new_state["control.0"], 1.0 + 0.5 * 2.0)
    np.testing.assert_allclose(new_state["control.1"], [2.0, 4.0])
    np.testing.assert_allclose(state["control.0"], 1.0)  # the old state is left as it was
    with pytest.raises(ValueError, match="model delta and the control delta"):
        strategy.apply(params, model_delta, state)


def test_silo_control_variate_round_trips_and_a_retry_starts_from_the_earlier_round(
    tmp_path: Path,
) -> None:
    zeros = scaffold.load_control(tmp_path, "run", 1, MODEL)
    assert all(not z.any() for z in zeros)
    after_1 = [np.full(shape, 1.0, np.float32) for _, shape in param_shapes(MODEL)]
    after_2 = [np.full(shape, 2.0, np.float32) for _, shape in param_shapes(MODEL)]
    scaffold.save_control(tmp_path, "run", 1, MODEL, after_1)
    scaffold.save_control(tmp_path, "run", 2, MODEL, after_2)
    np.testing.assert_array_equal(scaffold.load_control(tmp_path, "run", 2, MODEL)[0], 1.0)
    np.testing.assert_array_equal(scaffold.load_control(tmp_path, "run", 3, MODEL)[0], 2.0)
    assert not scaffold.load_control(tmp_path, "other-run", 3, MODEL)[0].any()


def _spec(**update: object) -> RunSpec:
    data: dict[str, object] = {
        "federation": "f",
        "dataset": "toy",
        "model": ModelSpec(kind="logreg", n_features=3),
        "strategy": StrategySpec(name="scaffold"),
    }
    return RunSpec.model_validate(data | update)


def test_update_carries_the_control_delta_after_the_model_delta() -> None:
    shapes = update_shapes(_spec())
    names = [n for n, _ in shapes]
    assert names == [
        "layers.0.weight",
        "layers.0.bias",
        "control.layers.0.weight",
        "control.layers.0.bias",
    ]
    assert update_shapes(_spec(strategy=StrategySpec())) == param_shapes(_spec().torch_model)


@pytest.mark.parametrize(
    ("update", "named"),
    [
        ({"privacy": PrivacySpec(noise_multiplier=1.0, clip_norm=1.0)}, "differential privacy"),
        ({"asynchronous": AsyncSpec(buffer_size=2), "min_silos": 2}, "asynchronous rounds"),
        ({"training": TrainingSpec(optimizer="adam")}, "optimizer 'adam'"),
    ],
)
def test_scaffold_refuses_what_its_control_variates_do_not_cover(
    update: dict[str, object], named: str
) -> None:
    with pytest.raises(ValueError, match=f"scaffold is not supported with {named}"):
        _spec(**update)


def test_delinquency_demo_defaults_to_scaffold_and_falls_back_where_it_does_not_apply(
    tmp_path: Path,
) -> None:
    n_features = FeaturePipeline.from_contract(load_contract("credit_delinquency")).n_features
    assert demo_spec(DemoOptions(tmp_path, dataset="delinquency"), n_features, 5).strategy == (
        StrategySpec(name="scaffold")
    )
    with_dp = demo_spec(DemoOptions(tmp_path, dataset="delinquency", dp=True), n_features, 5)
    assert with_dp.strategy.name == "fedavg" and with_dp.privacy is not None
    asked = DemoOptions(tmp_path, dataset="delinquency", strategy="scaffold", dp=True)
    with pytest.raises(DemoError, match="scaffold is not supported with differential privacy"):
        demo_spec(asked, n_features, 5)
    assert demo_spec(DemoOptions(tmp_path), 13).strategy.name == "fedavg"  # heart: unchanged
