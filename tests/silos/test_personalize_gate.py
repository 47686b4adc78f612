"""The personalization gate: bootstrap confidence that a model beats its start on its rows."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas.task_metrics import score
from silos import personalize_gate
from silos.personalize_gate import (
    MIN_GROUP_ROWS,
    gain_confidence,
    loss_gain_confidence,
    row_losses,
)


def _rows(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Labels, scores that rank them well, and scores that rank them at random."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    return y, y + rng.normal(0, 0.7, n), rng.normal(0, 1, n)


def test_a_clear_gain_is_confident_and_a_tie_is_not() -> None:
    y, good, noise = _rows(120)
    assert gain_confidence("auc", y, good, noise, seed=0) >= 0.99
    assert gain_confidence("auc", y, noise, good, seed=0) <= 0.01
    assert gain_confidence("auc", y, good, good, seed=0) == 0.0  # a tie is no evidence
    p_good, p_noise = 1 / (1 + np.exp(-2 * (good - 0.5))), np.full(len(y), 0.5)
    losses = row_losses("binary", y, p_good), row_losses("binary", y, p_noise)
    assert gain_confidence("loss", y, *losses, seed=0) >= 0.99
    assert gain_confidence("loss", y, losses[0], losses[0], seed=0) == 0.0


def test_too_few_rows_of_a_class_are_no_evidence() -> None:
    y, good, noise = _rows(200)
    neg = np.flatnonzero(y == 0)
    keep = np.r_[np.flatnonzero(y == 1), neg[: MIN_GROUP_ROWS - 1]]
    # the better model ranks every kept row right, yet four negatives decide nothing
    assert gain_confidence("auc", y[keep], y[keep] * 10.0, noise[keep], seed=0) == 0.0
    keep = np.r_[np.flatnonzero(y == 1), neg[:MIN_GROUP_ROWS]]
    assert gain_confidence("auc", y[keep], y[keep] * 10.0, noise[keep], seed=0) > 0.9
    with pytest.raises(ValueError, match="both classes"):
        gain_confidence("auc", np.ones(10), good[:10], noise[:10], seed=0)


def test_the_same_seed_gives_the_same_confidence_and_large_tables_are_capped(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    y, _, noise = _rows(3000)
    weak = np.random.default_rng(1).normal(0, 1, len(y)) + 0.1 * y  # a small real gain
    first = gain_confidence("auc", y, weak, noise, seed=7)
    assert first == gain_confidence("auc", y, weak, noise, seed=7)
    assert 0.9 < first < 1.0
    monkeypatch.setattr(personalize_gate, "MAX_ROWS", 300)
    capped = gain_confidence("auc", y, weak, noise, seed=7)
    assert 0.5 < capped < first - 0.05  # 300 rows carry less evidence than 3000


@settings(max_examples=25, deadline=None)
@given(
    n=st.integers(2 * MIN_GROUP_ROWS, 60),
    seed=st.integers(0, 2**16),
    by=st.sampled_from(["auc", "loss"]),
)
def test_both_directions_never_win_together(n: int, seed: int, by: str) -> None:
    """Wins are strict, so a and b cannot each beat the other on more than all resamples."""
    rng = np.random.default_rng(seed)
    y = np.r_[np.zeros(n // 2), np.ones(n - n // 2)]
    a, b = rng.random(n), rng.random(n)
    if by == "loss":
        a, b = row_losses("binary", y, a), row_losses("binary", y, b)
    forward = gain_confidence(by, y, a, b, seed)  # type: ignore[arg-type]
    backward = gain_confidence(by, y, b, a, seed)  # type: ignore[arg-type]
    assert 0.0 <= forward <= 1.0 and 0.0 <= backward <= 1.0
    assert forward + backward <= 1.0


@pytest.mark.parametrize("task", ["binary", "multiclass", "regression"])
def test_row_losses_average_to_the_tasks_loss(task: str) -> None:
    rng = np.random.default_rng(1)
    if task == "binary":
        y, p = rng.integers(0, 2, 50), rng.random(50)
    elif task == "multiclass":
        y, p = rng.integers(0, 3, 50), rng.dirichlet(np.ones(3), 50)
    else:
        y, p = rng.normal(size=50), rng.normal(size=50)
    expected = score(task, y, p)["loss"] if task != "regression" else np.mean((y - p) ** 2)
    assert row_losses(task, y, p).mean() == pytest.approx(expected)


def test_a_class_of_the_task_with_no_validation_rows_is_no_evidence() -> None:
    """Six positives and no negative: np.unique saw one class, so the MIN_GROUP_ROWS rule never
    fired and a model that only raised its base rate was certified at confidence 1.0."""
    y = np.ones(6)
    assert loss_gain_confidence("binary", y, np.full(6, 0.9), np.full(6, 0.6), 0) == 0.0
    # multiclass: the classes come from the predictions' columns, present in y or not
    y = np.repeat([0, 1], 10)
    new = np.tile([0.8, 0.15, 0.05], (20, 1))
    new[10:] = [0.15, 0.8, 0.05]
    old = np.full((20, 3), 1 / 3)
    assert loss_gain_confidence("multiclass", y, new, old, 0) == 0.0  # class 2: no rows
    assert loss_gain_confidence("multiclass", y, new[:, :2], old[:, :2], 0) == 1.0
    # regression has no classes: the rows together
    r = np.linspace(0, 1, 10)
    assert loss_gain_confidence("regression", r, r, r + 0.5, 0) == 1.0
