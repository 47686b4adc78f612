"""The silo's train/test split without scikit-learn: the same rows as `train_test_split`.

An idle agent holds only what its warm-up needs, and importing scikit-learn for one split
cost every agent about 13 MB (issue 20, lean agents). This reproduces scikit-learn's
`train_test_split(..., shuffle=True, random_state=seed, stratify=y)` draw for draw
(`ShuffleSplit`, or `StratifiedShuffleSplit` with `_approximate_mode`, on one
`numpy.random.RandomState(seed)`), so a seed picks the same holdout as before;
tests/silos/test_split.py checks it against scikit-learn on many tables.
"""

from __future__ import annotations

import math

import numpy as np


class SplitError(ValueError):
    """The table cannot be split as asked (too few rows or too few of a class)."""


def split_sizes(n_rows: int, test_fraction: float) -> tuple[int, int]:
    """(n_train, n_test): the holdout is rounded up, as scikit-learn rounds it."""
    n_test = math.ceil(test_fraction * n_rows)
    n_train = n_rows - n_test
    if n_train <= 0 or n_test <= 0:
        raise SplitError(
            f"{n_rows} rows leave {n_train} to train and {n_test} to test; both need at least 1"
        )
    return n_train, n_test


def _approximate_mode(counts: np.ndarray, n_draws: int, rng: np.random.RandomState) -> np.ndarray:
    """Rows per class for `n_draws` rows in proportion; ties broken at random."""
    continuous = counts / counts.sum() * n_draws
    floored = np.floor(continuous)
    need = int(n_draws - floored.sum())
    if need > 0:
        remainder = continuous - floored
        for value in np.sort(np.unique(remainder))[::-1]:
            (inds,) = np.where(remainder == value)
            add_now = min(len(inds), need)
            floored[rng.choice(inds, size=add_now, replace=False)] += 1
            need -= add_now
            if need == 0:
                break
    return floored.astype(int)


def split_indices(
    n_rows: int, test_fraction: float, seed: int, stratify: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Row positions (train, test), shuffled; stratified by the labels in `stratify` if given."""
    n_train, n_test = split_sizes(n_rows, test_fraction)
    rng = np.random.RandomState(seed)
    if stratify is None:
        permutation = rng.permutation(n_rows)
        return permutation[n_test : n_test + n_train], permutation[:n_test]
    _, y_indices, counts = np.unique(stratify, return_inverse=True, return_counts=True)
    n_classes = len(counts)
    if counts.min() < 2:
        raise SplitError("every class needs at least 2 rows to stratify")
    if n_train < n_classes or n_test < n_classes:
        raise SplitError(
            f"{n_train} training and {n_test} test rows cannot hold all {n_classes} classes"
        )
    by_class = np.split(np.argsort(y_indices, kind="stable"), np.cumsum(counts)[:-1])
    n_i = _approximate_mode(counts, n_train, rng)
    t_i = _approximate_mode(counts - n_i, n_test, rng)
    train: list[int] = []
    test: list[int] = []
    for i in range(n_classes):
        rows = by_class[i].take(rng.permutation(counts[i]), mode="clip")
        train.extend(rows[: n_i[i]])
        test.extend(rows[n_i[i] : n_i[i] + t_i[i]])
    return rng.permutation(train), rng.permutation(test)
