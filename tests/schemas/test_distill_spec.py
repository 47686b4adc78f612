"""FedDistill's shared parts: the soft-label arithmetic, the spec, what a run may combine."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from schemas.distill import DistillSpec, reference_seed, soft_labels_from_sum, weighted_soft_labels
from schemas.secagg.quantize import Quantizer
from schemas.specs import (
    AsyncSpec,
    ModelSpec,
    PersonalizationSpec,
    PrivacySpec,
    RunSpec,
    SecureAggregationSpec,
    StrategySpec,
)

MODEL = ModelSpec(kind="logreg", n_features=4)
BASE = {
    "federation": "f",
    "dataset": "d",
    "model": MODEL,
    "federation_statistics": True,
    "distill": DistillSpec(kinds={"default": "logreg", "a": "xgboost", "b": "mlp"}),
}


@settings(max_examples=60, deadline=None)
@given(
    data=st.data(),
    n_silos=st.integers(1, 8),
    n_rows=st.integers(1, 64),
    bits=st.sampled_from([32, 64]),
)
def test_securely_summed_weighted_predictions_give_the_weighted_mean(
    data: st.DataObject, n_silos: int, n_rows: int, bits: int
) -> None:
    """What the engine publishes (quantized w_k * p_k summed, then / sum w_k) is the
    example-weighted mean of the silos' predictions within the quantizer's bound."""
    probs = st.floats(0, 1, allow_nan=False)
    preds = [
        np.array(data.draw(st.lists(probs, min_size=n_rows, max_size=n_rows)))
        for _ in range(n_silos)
    ]
    counts = data.draw(st.lists(st.integers(1, 10_000), min_size=n_silos, max_size=n_silos))
    weights = [c / sum(counts) for c in counts]  # w_k = n_k / N, as secure_rounds.weights_of
    quant = Quantizer(clip=SecureAggregationSpec().clip, n_summands=n_silos, bits=bits)
    total = np.zeros(n_rows, quant.dtype)
    for w, p in zip(weights, preds, strict=True):
        total += quant.quantize((w * p).astype(np.float64))
    published = soft_labels_from_sum(quant.dequantize_sum(total), sum(weights))
    expected = np.average(np.stack(preds), axis=0, weights=counts)
    np.testing.assert_allclose(published, expected, atol=quant.sum_error_bound(n_silos) + 1e-9)
    np.testing.assert_allclose(weighted_soft_labels(preds, counts), expected, atol=1e-12)
    assert ((published >= 0) & (published <= 1)).all()


def test_the_order_of_silos_does_not_change_the_soft_labels() -> None:
    rng = np.random.default_rng(3)
    preds, counts = [rng.uniform(size=10) for _ in range(4)], [5, 50, 500, 7]
    forward = weighted_soft_labels(preds, counts)
    np.testing.assert_allclose(forward, weighted_soft_labels(preds[::-1], counts[::-1]))


def test_bad_soft_label_inputs_are_refused() -> None:
    with pytest.raises(ValueError, match="one prediction vector per silo"):
        weighted_soft_labels([np.zeros(3)], [1, 2])
    with pytest.raises(ValueError, match="positive"):
        weighted_soft_labels([np.zeros(3)], [0])
    with pytest.raises(ValueError, match="no surviving"):
        soft_labels_from_sum(np.zeros(3), 0.0)


def test_the_weight_grid_is_sorted_bounded_and_reads_the_older_single_weight() -> None:
    assert DistillSpec().weights[0] == 0.0  # by default a silo may keep its model alone
    assert DistillSpec(weights=(1.0, 0.0, 0.5, 1.0)).weights == (0.0, 0.5, 1.0)
    assert DistillSpec.model_validate({"weight": 0.5}).weights == (0.5,)  # older runs' specs
    with pytest.raises(ValidationError, match="drop the older"):
        DistillSpec.model_validate({"weight": 0.5, "weights": [0, 1]})
    with pytest.raises(ValidationError, match=r"\[0, 100\]"):
        DistillSpec(weights=(0.0, -1.0))
    with pytest.raises(ValidationError, match=r"\[0, 100\]"):
        DistillSpec(weights=(float("nan"),))
    with pytest.raises(ValidationError):
        DistillSpec(weights=())


def test_kinds_default_and_overrides() -> None:
    spec = DistillSpec(kinds={"default": "logreg", "cleveland": "xgboost"})
    assert spec.kind_for("cleveland") == "xgboost" and spec.kind_for("hungary") == "logreg"
    with pytest.raises(ValidationError, match='"default" kind'):
        DistillSpec(kinds={"cleveland": "xgboost"})
    with pytest.raises(ValidationError, match="cannot exist"):
        DistillSpec(kinds={"default": "mlp", "no such silo!": "xgboost"})
    with pytest.raises(ValidationError):
        DistillSpec(kinds={"default": "randomforest"})  # type: ignore[dict-item]
    assert reference_seed("r1") == reference_seed("r1") != reference_seed("r2")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"privacy": PrivacySpec(noise_multiplier=1.0, clip_norm=1.0)}, "differential privacy"),
        ({"asynchronous": AsyncSpec(buffer_size=2)}, "asynchronous"),
        ({"personalize": PersonalizationSpec()}, "personalize"),
        ({"strategy": StrategySpec(name="scaffold")}, "strategy 'scaffold'"),
        ({"secure_aggregation": SecureAggregationSpec(enabled=False)}, "secure_aggregation"),
        ({"mode": "echo"}, "plugin mode"),
        ({"federation_statistics": False}, "federation_statistics=true"),
        (
            {"model": ModelSpec(kind="logreg", n_features=4, task="regression")},
            "binary tasks only",
        ),
    ],
)
def test_a_distillation_run_refuses_what_it_cannot_do(change: dict, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        RunSpec(**{**BASE, **change})


def test_a_distillation_run_is_accepted() -> None:
    spec = RunSpec(**BASE)
    assert spec.distill is not None and spec.distill.kind_for("a") == "xgboost"
    assert RunSpec.model_validate_json(spec.model_dump_json()) == spec  # travels in every task
