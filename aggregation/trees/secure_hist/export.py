"""The grown trees as one native XGBoost JSON model (what `xgboost.Booster` loads).

Node arrays follow XGBoost's own layout (see `aggregation.trees.xgb_model`): a leaf's value is
its ``split_conditions`` entry (eta applied) and its ``base_weights`` entry; an internal node's
``base_weights`` is its weight without eta, as XGBoost's `ApplyTreeSplit` stores it. The model
is parsed back with `parse_xgb` before it is returned, so a malformed export fails here.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from aggregation.trees.secure_hist.grow import Node
from aggregation.trees.secure_hist.splits import calc_weight
from aggregation.trees.xgb_model import dump_xgb, format_base_score, parse_xgb
from schemas.secure_hist.protocol import HistRunConfig

ROOT_PARENT = 2147483647
XGB_VERSION = [3, 2, 0]


def _f32(value: float) -> float:
    return float(np.float32(value))


def tree_json(index: int, nodes: Sequence[Node], config: HistRunConfig) -> dict[str, Any]:
    """One tree in XGBoost's JSON layout."""
    scale = config.codec.scale
    internal = [n.left != -1 for n in nodes]
    weights = [
        _f32(calc_weight(n.stats.g / scale, n.stats.h / scale, config.params)) for n in nodes
    ]
    n = len(nodes)
    return {
        "base_weights": [
            w if i else nd.value for w, i, nd in zip(weights, internal, nodes, strict=True)
        ],
        "categories": [],
        "categories_nodes": [],
        "categories_segments": [],
        "categories_sizes": [],
        "default_left": [int(bool(nd.split and nd.split.default_left)) for nd in nodes],
        "id": index,
        "left_children": [nd.left for nd in nodes],
        "loss_changes": [_f32(nd.split.loss_chg) if nd.split else 0.0 for nd in nodes],
        "parents": [ROOT_PARENT if nd.parent < 0 else nd.parent for nd in nodes],
        "right_children": [nd.right for nd in nodes],
        "split_conditions": [_f32(nd.threshold) if nd.left != -1 else nd.value for nd in nodes],
        "split_indices": [nd.split.feature if nd.split else 0 for nd in nodes],
        "split_type": [0] * n,
        "sum_hessian": [_f32(nd.stats.h / scale) for nd in nodes],
        "tree_param": {
            "num_deleted": "0",
            "num_feature": str(config.n_features),
            "num_nodes": str(n),
            "size_leaf_vector": "1",
        },
    }


def export_xgb(
    trees: Sequence[Sequence[Node]],
    config: HistRunConfig,
    base_score: float | Sequence[float],
    feature_names: Sequence[str] = (),
) -> bytes:
    """The model as XGBoost JSON bytes (checked by `parse_xgb`).

    multi:softprob: `trees` holds whole boosting rounds of K trees in class order (tree t is
    for class t % K) and `base_score` the K base margins.
    """
    n, k = len(trees), config.per_round
    objective: dict[str, Any] = {"name": config.objective}
    if config.objective == "binary:logistic":
        objective["reg_loss_param"] = {"scale_pos_weight": "1"}
    if config.objective == "multi:softprob":
        objective["softmax_multiclass_param"] = {"num_class": str(config.num_class)}
    doc = {
        "learner": {
            "attributes": {},
            "feature_names": list(feature_names),
            "feature_types": ["float"] * len(feature_names),
            "gradient_booster": {
                "model": {
                    "cats": {"enc": [], "feature_segments": [], "sorted_idx": []},
                    "gbtree_model_param": {"num_parallel_tree": "1", "num_trees": str(n)},
                    "iteration_indptr": list(range(0, n + 1, k)),
                    "tree_info": [i % k for i in range(n)],
                    "trees": [tree_json(i, t, config) for i, t in enumerate(trees)],
                },
                "name": "gbtree",
            },
            "learner_model_param": {
                "base_score": format_base_score(base_score),
                "boost_from_average": "0",
                "num_class": str(config.num_class),
                "num_feature": str(config.n_features),
                "num_target": "1",
            },
            "objective": objective,
        },
        "version": XGB_VERSION,
    }
    data = dump_xgb(doc)
    parse_xgb(data)
    return data
