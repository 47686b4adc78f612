"""Quantized secure-hist runs end to end in process: fewer bytes, a close model, and the same
model whatever the wire width or a silo's restart of a tree."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
from sklearn.metrics import roc_auc_score
from support.secure_hist_driver import run_secure_hist

from aggregation.trees.models import predict_proba
from schemas.secure_hist.protocol import HistLayout, HistRunConfig, LevelRequest, NodeCount
from schemas.tree_params import XGBoostParams
from silos import hist_trainer
from silos.hist_trainer import HistSilo


def federation(n_silos: int = 4, rows: int = 600, seed: int = 5):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(rows * n_silos, 5)).astype(np.float32)
    y = (X[:, 0] - 0.7 * X[:, 1] + 0.4 * X[:, 2] + rng.normal(size=len(X)) > 0).astype(float)
    return {f"bank-{i}": (X[i::n_silos], y[i::n_silos]) for i in range(n_silos)}, X, y


LOSSLESS = HistRunConfig(
    "binary:logistic",
    XGBoostParams(max_depth=3, eta=0.3, max_bin=16),
    4,
    tuple((-3.0, 3.0) for _ in range(5)),
    fine_cells=256,
)
QUANTIZED = replace(LOSSLESS, grad_bits=3)


def test_a_quantized_run_sends_fewer_bytes_for_a_close_model() -> None:
    data, X, y = federation()
    lossless = run_secure_hist(LOSSLESS, data)
    packed = run_secure_hist(QUANTIZED, data)
    wide = run_secure_hist(replace(QUANTIZED, packed=False), data)
    # the rounding is the silos' own, the same whatever the wire width
    assert packed.model == wide.model
    assert packed.model != lossless.model  # quantization did change the sums
    # small vectors: the masking protocol's own messages are most of the bytes here
    assert max(packed.bytes_sent.values()) < 0.9 * max(lossless.bytes_sent.values())
    auc = {
        name: roc_auc_score(y, predict_proba("xgboost", r.model, X))
        for name, r in (("lossless", lossless), ("quantized", packed))
    }
    assert auc["lossless"] > 0.8
    assert abs(auc["quantized"] - auc["lossless"]) < 0.01


def test_a_silo_that_grows_a_tree_again_rounds_it_the_same_way() -> None:
    data, _, _ = federation(n_silos=4)
    mid_tree = run_secure_hist(QUANTIZED, data, drop_at={"bank-2": (1, 2)})
    at_root = run_secure_hist(QUANTIZED, data, drop_at={"bank-2": (1, 0)})
    assert mid_tree.left == ["bank-2"] and mid_tree.model == at_root.model


def test_a_derived_sibling_equals_its_own_histogram() -> None:
    """Each row is rounded once per tree, so parent - child is the sibling's histogram
    exactly (rounding per node would leave it off by a step, and hessians below zero)."""
    data, _, _ = federation(n_silos=1, rows=500)
    X, y = data["bank-0"]
    state = HistSilo.create("bank-0", X, y, QUANTIZED)
    cuts = [np.array([-1.0, 0.0, 0.5], dtype=np.float32) for _ in range(5)]
    hist_trainer.start_training(state, cuts, 0.37)  # g, h off the grid at S = 3
    hist_trainer.start_tree(state, 0)
    assert state.layout == HistLayout.from_cuts(cuts)
    rows = np.arange(len(y))
    left = rows[X[:, 0] < 0.0]
    right = rows[X[:, 0] >= 0.0]
    parent = hist_trainer.node_histograms(state, rows)
    assert np.array_equal(
        parent - hist_trainer.node_histograms(state, left),
        hist_trainer.node_histograms(state, right),
    )
    assert set(np.unique(state.hq)) <= {0.0, 1.0, 2.0}  # h <= 1/4 at S = 3: 0, 1 or 2 steps
    # a Dask partition of the same silo draws its own stream, not the same draws again
    shard = HistSilo.create("bank-0", X, y, QUANTIZED)
    shard.rounding_stream = "partition 1"
    hist_trainer.start_training(shard, cuts, 0.37)
    hist_trainer.start_tree(shard, 0)
    assert not np.array_equal(shard.gq, state.gq)
    # growing the tree again (after a silo left) gives the same level vector
    request = LevelRequest(0, 0, 1, (), (NodeCount(0, len(y)),))
    first = hist_trainer.level_vector(state, request)
    hist_trainer.start_tree(state, 0, restart=True)
    assert np.array_equal(hist_trainer.level_vector(state, request), first)
