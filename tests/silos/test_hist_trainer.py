"""A silo's histograms, binning and refusals in secure-histogram boosting."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from schemas.secure_hist.errors import NodeTooSmallError, UnknownNodeError
from schemas.secure_hist.protocol import (
    HistLayout,
    HistRunConfig,
    LevelRequest,
    NodeCount,
    NodeSplit,
    from_modular,
)
from schemas.tree_params import XGBoostParams
from silos import hist_trainer
from silos.hist_binning import bin_matrix, fine_grid_counts, grid_cells
from silos.hist_trainer import HistSilo

values = st.floats(-3, 3, width=32) | st.just(float("nan"))


def config(n_features: int, objective: str = "binary:logistic") -> HistRunConfig:
    ranges = tuple((-2.0, 2.0) for _ in range(n_features))
    return HistRunConfig(objective, XGBoostParams(max_bin=8), 2, ranges, fine_cells=64)


def silo(X: np.ndarray, y: np.ndarray, objective: str = "binary:logistic") -> HistSilo:
    state = HistSilo.create("bank-a", X, y, config(X.shape[1], objective), min_rows_policy=1)
    cuts = [np.array([-1.0, 0.0, 0.5], dtype=np.float32) for _ in range(X.shape[1])]
    hist_trainer.start_training(state, cuts, 0.4)
    hist_trainer.start_tree(state, 0)
    return state


@settings(max_examples=40, deadline=None)
@given(
    X=hnp.arrays(np.float32, st.tuples(st.integers(1, 40), st.integers(1, 4)), elements=values),
    objective=st.sampled_from(["binary:logistic", "reg:squarederror"]),
    seed=st.integers(0, 1000),
)
def test_histograms_equal_a_row_by_row_sum(X, objective, seed) -> None:
    y = np.random.default_rng(seed).integers(0, 2, len(X)).astype(float)
    state = silo(X, y, objective)
    request = LevelRequest(0, 0, 1, (), (NodeCount(0, len(X)),))
    block = from_modular(hist_trainer.level_vector(state, request)).reshape(3, -1)
    layout, codec = state.layout, state.config.codec
    expected = np.zeros((3, layout.total))
    bins = bin_matrix(X, [np.array([-1.0, 0.0, 0.5], dtype=np.float32)] * X.shape[1])
    for i in range(len(X)):
        for f in range(X.shape[1]):
            slot = layout.offsets[f] + bins[i, f]
            expected[:, slot] += [codec.encode(state.g[i]), codec.encode(state.h[i]), 1]
    np.testing.assert_array_equal(block, expected)
    # every feature's slots (bins + missing) hold every row once
    for f in range(X.shape[1]):
        seg = block[2, layout.offsets[f] : layout.offsets[f] + layout.n_bins[f] + 1]
        assert seg.sum() == len(X)


@settings(max_examples=30, deadline=None)
@given(
    X=hnp.arrays(np.float32, st.tuples(st.integers(2, 60), st.just(3)), elements=values),
    feature=st.integers(0, 2),
    bin_=st.integers(-1, 3),
    default_left=st.booleans(),
)
def test_subtraction_gives_the_sibling(X, feature, bin_, default_left) -> None:
    y = (np.arange(len(X)) % 2).astype(float)
    parent_state = silo(X, y)
    root = LevelRequest(0, 0, 1, (), (NodeCount(0, len(X)),))
    parent = from_modular(hist_trainer.level_vector(parent_state, root))
    split = NodeSplit(0, feature, bin_, default_left, 1, 2)
    both = LevelRequest(0, 1, 2, (split,), (NodeCount(1, len(X)), NodeCount(2, len(X))))
    children = from_modular(hist_trainer.level_vector(parent_state, both)).reshape(2, -1)
    np.testing.assert_array_equal(parent - children[0], children[1])


def test_fine_grid_cells_agree_with_binning_at_the_edges() -> None:
    edges = np.linspace(0, 1, 65).astype(np.float32)
    x = np.concatenate([edges, np.nextafter(edges, -np.inf), [np.nan, -5, 5]]).astype(np.float32)
    cells = grid_cells(x, 0.0, 1.0, 64)
    for k in range(1, 64):  # cell >= k exactly when x >= edge k (what cuts at edges use)
        present = ~np.isnan(x)
        np.testing.assert_array_equal(cells[present] >= k, x[present] >= edges[k])
    assert cells[np.isnan(x)].tolist() == [64]
    counts = fine_grid_counts(x[:, None], [(0.0, 1.0)], 64)
    assert counts.sum() == len(x) and counts[64] == 1


def test_unknown_node_and_wrong_level_are_refused_without_changes() -> None:
    X = np.random.default_rng(0).normal(size=(50, 2)).astype(np.float32)
    state = silo(X, (X[:, 0] > 0).astype(float))
    hist_trainer.level_vector(state, LevelRequest(0, 0, 1, (), (NodeCount(0, 50),)))
    with pytest.raises(UnknownNodeError, match="node 7") as err:
        bad = LevelRequest(0, 1, 2, (NodeSplit(7, 0, 1, False, 1, 2),), (NodeCount(1, 50),))
        hist_trainer.level_vector(state, bad)
    assert (err.value.silo, err.value.tree, err.value.depth, err.value.node) == ("bank-a", 0, 1, 7)
    with pytest.raises(UnknownNodeError, match="node 5"):
        ok_split = (NodeSplit(0, 0, 1, False, 1, 2),)
        hist_trainer.level_vector(state, LevelRequest(0, 1, 2, ok_split, (NodeCount(5, 50),)))
    assert set(state.rows) == {0}  # nothing was applied
    with pytest.raises(UnknownNodeError, match="depth 3"):
        hist_trainer.level_vector(state, LevelRequest(0, 3, 2, (), ()))


def test_node_below_policy_minimum_is_refused() -> None:
    X = np.random.default_rng(0).normal(size=(50, 2)).astype(np.float32)
    state = silo(X, (X[:, 0] > 0).astype(float))
    state.min_rows_policy = 20
    with pytest.raises(NodeTooSmallError, match="fewer than 20"):
        hist_trainer.level_vector(state, LevelRequest(0, 0, 1, (), (NodeCount(0, 10),)))
    with pytest.raises(NodeTooSmallError, match="inconsistent"):
        hist_trainer.level_vector(state, LevelRequest(0, 0, 1, (), (NodeCount(0, 30),)))
    cfg = config(2)
    with pytest.raises(NodeTooSmallError, match="does not join"):
        HistSilo.create("bank-b", X, X[:, 0], cfg, min_rows_policy=5)


def test_layout_rejects_a_vector_of_the_wrong_length() -> None:
    layout = HistLayout.from_cuts([np.zeros(3, np.float32), np.zeros(1, np.float32)])
    assert layout.total == 5 + 3
    with pytest.raises(Exception, match=r"silo bank-a, tree 2, depth 1.*2 node\(s\)"):
        layout.check_level(np.zeros(7, "<u8"), 2, silo="bank-a", tree=2, depth=1)
