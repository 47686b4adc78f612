"""Task metrics agree with scikit-learn's definitions and refuse malformed predictions."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import f1_score, log_loss, mean_absolute_error, r2_score, roc_auc_score

from schemas.contracts import ContractError, load_contract_text
from schemas.task_metrics import (
    METRICS_BY_TASK,
    higher_is_better,
    macro_f1,
    primary_metric,
    roc_auc,
    score,
)


def test_binary_matches_sklearn() -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 200)
    p = np.clip(y * 0.3 + rng.random(200) * 0.7, 0, 1)
    got = score("binary", y, p)
    assert got["auc"] == pytest.approx(roc_auc_score(y, p))
    assert got["loss"] == pytest.approx(log_loss(y, p))
    assert got["accuracy"] == pytest.approx(np.mean((p >= 0.5) == y))


# few distinct scores, so that ties between and within the classes are common
_SCORES = st.lists(st.integers(0, 6).map(lambda k: k / 6), min_size=2, max_size=60)


@settings(max_examples=200, deadline=None)
@given(st.data(), _SCORES, st.sampled_from([(0, 1), (1, 2), (-1, 1)]))
def test_roc_auc_is_sklearns_with_ties_and_any_two_labels(data, scores, labels) -> None:
    y = np.array(
        data.draw(st.lists(st.sampled_from(labels), min_size=len(scores), max_size=len(scores)))
    )
    got = roc_auc(y, scores)
    if len(np.unique(y)) < 2:
        assert got is None
    else:
        assert got == pytest.approx(roc_auc_score(y, scores), abs=1e-12)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 4), st.integers(0, 4)), min_size=1, max_size=80))
def test_macro_f1_is_sklearns_over_labels_and_predictions(pairs) -> None:
    y, pred = (np.array(col) for col in zip(*pairs, strict=True))
    want = f1_score(y, pred, average="macro", zero_division=0)
    assert macro_f1(y, pred) == pytest.approx(want, abs=1e-12)


def test_roc_auc_refuses_non_finite_scores_and_a_length_mismatch() -> None:
    with pytest.raises(ValueError, match="NaN or infinity"):
        roc_auc([0, 1, 1], [0.2, np.nan, 0.9])
    with pytest.raises(ValueError, match="3 labels but 2"):
        roc_auc([0, 1, 1], [0.2, 0.9])
    assert roc_auc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == pytest.approx(0.75)


def test_multiclass_matches_sklearn() -> None:
    rng = np.random.default_rng(1)
    y = rng.integers(0, 3, 300)
    p = rng.dirichlet(np.ones(3), 300)
    p[np.arange(300), y] += 0.5
    p /= p.sum(axis=1, keepdims=True)
    got = score("multiclass", y, p)
    assert got["f1_macro"] == pytest.approx(f1_score(y, p.argmax(1), average="macro"))
    assert got["loss"] == pytest.approx(log_loss(y, p, labels=[0, 1, 2]))
    assert set(METRICS_BY_TASK["multiclass"]) <= set(got)


def test_regression_matches_sklearn() -> None:
    rng = np.random.default_rng(2)
    y = rng.normal(size=100)
    p = y + rng.normal(scale=0.3, size=100)
    got = score("regression", y, p)
    assert got["rmse"] == pytest.approx(np.sqrt(np.mean((p - y) ** 2)))
    assert got["mae"] == pytest.approx(mean_absolute_error(y, p))
    assert got["r2"] == pytest.approx(r2_score(y, p))


def test_undefined_metrics_are_none_and_bad_shapes_are_refused() -> None:
    assert score("binary", [1, 1], [0.6, 0.9])["auc"] is None
    assert score("regression", [2.0, 2.0], [2.0, 2.5])["r2"] is None
    with pytest.raises(ValueError, match="shape"):
        score("multiclass", [0, 1], [0.2, 0.8])
    with pytest.raises(ValueError, match="class index"):
        score("multiclass", [0, 3], [[0.5, 0.5], [0.5, 0.5]])
    with pytest.raises(ValueError, match="2 labels but 1"):
        score("binary", [0, 1], [0.5])
    assert primary_metric("regression") == "rmse" and not higher_is_better("rmse")


_HEAD = """name = "t"
version = "1"
min_rows = 1
features = ["x"]
[[columns]]
name = "x"
type = "numeric"
range = [0, 1]
"""


def _contract(target: str, ycol: str) -> str:
    return _HEAD + target + "\n[[columns]]\n" + ycol


def test_target_task_rules() -> None:
    numeric_y = 'name = "y"\ntype = "numeric"\nrange = [0, 10]\n'
    cat_y = 'name = "y"\ntype = "categorical"\ncategories = ["a", "b", "c"]\n'
    reg = load_contract_text(
        _contract('[target]\ncolumn = "y"\ntask = "regression"\n', numeric_y), "r"
    )
    assert (reg.task, reg.n_outputs, reg.classes) == ("regression", 1, ())
    multi = load_contract_text(
        _contract('[target]\ncolumn = "y"\ntask = "multiclass"\nvalues = ["a", "b", "c"]\n', cat_y),
        "m",
    )
    assert (multi.n_outputs, multi.classes) == (3, ("a", "b", "c"))
    with pytest.raises(ContractError, match="m2: .*lists its classes"):
        load_contract_text(_contract('[target]\ncolumn = "y"\ntask = "multiclass"\n', cat_y), "m2")
    with pytest.raises(ContractError, match="binary target needs positive_if"):
        load_contract_text(_contract('[target]\ncolumn = "y"\n', numeric_y), "b")
    with pytest.raises(ContractError, match="regression target must be a numeric"):
        load_contract_text(_contract('[target]\ncolumn = "y"\ntask = "regression"\n', cat_y), "r2")
    with pytest.raises(ContractError, match="draft.toml: TOML syntax error.*line"):
        load_contract_text("name = \n", "draft.toml")
