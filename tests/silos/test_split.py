"""silos.split draws exactly scikit-learn's train_test_split holdout, without importing it."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.model_selection import train_test_split

from silos.split import SplitError, split_indices


def _cases() -> list[tuple[int, float, int, list[int] | None]]:
    """(rows, test fraction, seed, class counts or None for an unstratified split)."""
    rng = np.random.default_rng(0)
    cases: list[tuple[int, float, int, list[int] | None]] = [
        (303, 0.25, 42, [164, 139]),  # the heart demo's cleveland shape
        (10, 0.3, 0, [5, 5]),
        (7, 0.5, 1, [2, 2, 3]),  # three classes, ties in the remainders
        (40, 0.25, 0, None),
        (2, 0.5, 3, None),
    ]
    for _ in range(60):
        n_classes = int(rng.integers(2, 6))
        counts = [int(c) for c in rng.integers(2, 60, size=n_classes)]
        fraction = float(rng.choice([0.1, 0.2, 0.25, 1 / 3, 0.5, 0.7]))
        cases.append((sum(counts), fraction, int(rng.integers(0, 10_000)), counts))
    for _ in range(20):
        cases.append(
            (
                int(rng.integers(2, 500)),
                float(rng.uniform(0.05, 0.9)),
                int(rng.integers(0, 99)),
                None,
            )
        )
    return cases


@pytest.mark.parametrize(("n", "fraction", "seed", "counts"), _cases())
def test_same_rows_as_scikit_learn(
    n: int, fraction: float, seed: int, counts: list[int] | None
) -> None:
    y = None
    if counts is not None:
        y = np.repeat(np.arange(len(counts)), counts)
        np.random.default_rng(seed).shuffle(y)  # classes interleaved, as in a real table
    rows = np.arange(n)
    try:
        want_train, want_test = train_test_split(
            rows, test_size=fraction, random_state=seed, shuffle=True, stratify=y
        )
    except ValueError:
        with pytest.raises(SplitError):
            split_indices(n, fraction, seed, y)
        return
    train, test = split_indices(n, fraction, seed, y)
    np.testing.assert_array_equal(train, want_train)
    np.testing.assert_array_equal(test, want_test)
    assert sorted([*train, *test]) == list(range(n))  # a partition of the rows


def test_frames_keep_their_row_labels() -> None:
    """`silos.data` takes rows by position; the frame's own index survives, as with sklearn."""
    df = pd.DataFrame({"x": range(20), "y": [0, 1] * 10}, index=range(100, 120))
    train, test = split_indices(len(df), 0.25, 5, df["y"].to_numpy())
    want_train, want_test = train_test_split(
        df, test_size=0.25, random_state=5, shuffle=True, stratify=df["y"]
    )
    pd.testing.assert_frame_equal(df.iloc[train], want_train)
    pd.testing.assert_frame_equal(df.iloc[test], want_test)


def test_refuses_what_cannot_be_split() -> None:
    with pytest.raises(SplitError, match="1 rows leave 0 to train"):
        split_indices(1, 0.5, 0)
    with pytest.raises(SplitError, match="at least 2 rows"):
        split_indices(5, 0.4, 0, np.array([0, 0, 0, 0, 1]))
    with pytest.raises(SplitError, match="cannot hold all 3 classes"):
        split_indices(6, 0.2, 0, np.array([0, 0, 1, 1, 2, 2]))
