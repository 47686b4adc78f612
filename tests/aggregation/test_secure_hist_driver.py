"""The in-process secure-histogram run: a silo killed mid-tree, bad vectors at the service."""

from __future__ import annotations

import numpy as np
import pytest
from support.secure_hist_driver import run_secure_hist

from aggregation.trees.secure_hist.grow import receive_level, start_tree
from schemas.secure_hist.errors import HistVectorError, SiloDroppedError
from schemas.secure_hist.protocol import HistRunConfig
from schemas.tree_params import XGBoostParams


def federation(n_silos: int = 4, rows: int = 400, seed: int = 3):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(rows * n_silos, 4)).astype(np.float32)
    y = (X[:, 0] + 0.5 * X[:, 1] + rng.normal(size=len(X)) * 0.5 > 0).astype(float)
    return {f"bank-{i}": (X[i::n_silos], y[i::n_silos]) for i in range(n_silos)}


CFG = HistRunConfig(
    "binary:logistic",
    XGBoostParams(max_depth=3, eta=0.3, max_bin=16),
    3,
    tuple((-3.0, 3.0) for _ in range(4)),
    fine_cells=256,
    min_rows_per_node=5,
)


def test_silo_killed_mid_tree_is_recovered_and_leaves() -> None:
    data = federation()
    mid_tree = run_secure_hist(CFG, data, drop_at={"bank-2": (1, 2)})
    assert mid_tree.left == ["bank-2"]
    assert len(mid_tree.trees) == 3
    # tree 1 was grown again without bank-2, so the model equals one where bank-2 vanished
    # at tree 1's root level (no restart needed there) ...
    at_root = run_secure_hist(CFG, data, drop_at={"bank-2": (1, 0)})
    assert mid_tree.model == at_root.model
    # ... and tree 0 is the tree all four banks grew
    full = run_secure_hist(CFG, data)
    assert full.left == [] and mid_tree.trees[0] == full.trees[0]
    assert mid_tree.trees[1] != full.trees[1]


def test_too_many_drops_stop_the_run() -> None:
    data = federation(3)
    with pytest.raises(SiloDroppedError, match="needed 3, got 2"):
        run_secure_hist(CFG, data, drop_at={"bank-0": (0, 1)})


def test_service_refuses_a_level_sum_of_the_wrong_length() -> None:
    cuts = [np.array([0.0], np.float32)] * 4
    grower = start_tree(CFG, cuts, tree=0, rows=100, counter=1)
    with pytest.raises(HistVectorError, match=r"tree 0, depth 0.*1 node\(s\)"):
        receive_level(grower, np.zeros(5, "<u8"), 2)
