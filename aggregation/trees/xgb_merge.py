"""Merging silos' new XGBoost trees into one global XGBoost model (bagging and cyclic).

Bagging rule (the same for LightGBM, see `lgb_merge`): in a round every silo k starts from the
global model F and grows trees whose sum is g_k. The new global model is

    F' = F + sum_k (n_k / N) * g_k,        N = sum_k n_k (training rows of accepted silos)

so a round adds the example-weighted average of the silos' functions and the ensemble stays
calibrated however many silos take part (adding the g_k unscaled would overshoot K times).
It is applied by multiplying every leaf value (and base weight) of silo k's new trees by
n_k / N and appending all scaled trees, silos in sorted name order, to F's trees.

In the first round there is no F: each silo's model carries its own base score b_k (XGBoost's
``boost_from_average``), so the merged base margin is sum_k (n_k / N) * margin(b_k), which is
the same average applied to the silos' constant terms. Later rounds keep F's base score, and a
silo whose trees come with another base score did not start from F: the merge refuses it.

Cyclic: the silo's new trees are appended unscaled (`append_xgb`).

multi:softprob: every silo's update holds whole boosting rounds of K trees (one per class, in
class order, `xgb_model`); scaling is per tree and appending keeps whole rounds, so the merged
``tree_info`` is again 0..K-1 repeated. Base scores are K margins, averaged per class.

The output is one native model: `xgboost.Booster(model_file=bytearray(merged))` loads it, one
tree per boosting iteration.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from aggregation.trees.merge_rules import check_same_family, parse_updates, who
from aggregation.trees.xgb_model import (
    XGBModel,
    dump_xgb,
    format_base_score,
    parse_xgb,
)
from schemas.objectives import margin_to_base_score
from schemas.tree_errors import MergeError


def merge_bagging_xgb(base: bytes | None, updates: Mapping[str, tuple[bytes, int]]) -> bytes:
    """Merge every silo's new trees into the next global model.

    Parameters
    ----------
    base
        The current global model (JSON bytes), or None in the first round.
    updates
        Silo name -> (JSON bytes of a model holding only that silo's new trees, the number of
        training rows it used). The result does not depend on the mapping's order.

    Returns
    -------
    bytes
        The new global model as XGBoost JSON.

    Raises
    ------
    MergeError
        No updates, a non-positive row count, or models that disagree on objective, feature
        count, feature names or base score.
    TreeModelFormatError, UnsupportedTreeError
        A model does not parse (validate updates first with `validate.validate_tree_update`).
    """
    weights, parsed = parse_updates(updates, parse_xgb)
    silos = list(weights)
    base_model = parse_xgb(base) if base is not None else None
    reference = base_model or parsed[silos[0]]
    for silo in silos:
        check_compatible(reference, parsed[silo], silo, require_same_base=base_model is not None)
    if base_model is None:
        margin = np.sum([weights[s] * parsed[s].base_margin for s in silos], axis=0)
        base_score = [margin_to_base_score(float(m), reference.objective) for m in margin]
        doc, trees = copy.deepcopy(parsed[silos[0]].doc), []
    else:
        base_score = list(base_model.base_scores)
        doc, trees = copy.deepcopy(base_model.doc), list(_raw_trees(base_model.doc))
    for silo in silos:
        trees.extend(_scaled(t, weights[silo]) for t in _raw_trees(parsed[silo].doc))
    return dump_xgb(_with_trees(doc, trees, base_score, reference.per_round))


def append_xgb(base: bytes | None, update: bytes, silo: str | None = None) -> bytes:
    """Cyclic hand-off: append one silo's new trees, unscaled, to the global model.

    With no base (the first silo of the first round) the silo's model becomes the global
    model. Raises `MergeError` when the trees do not continue `base` (objective, features or
    base score differ).
    """
    new = parse_xgb(update)
    if base is None:
        doc = copy.deepcopy(new.doc)
        return dump_xgb(_with_trees(doc, _raw_trees(new.doc), new.base_scores, new.per_round))
    base_model = parse_xgb(base)
    check_compatible(base_model, new, silo, require_same_base=True)
    trees = [*_raw_trees(base_model.doc), *_raw_trees(new.doc)]
    doc = copy.deepcopy(base_model.doc)
    return dump_xgb(_with_trees(doc, trees, base_model.base_scores, base_model.per_round))


def check_compatible(
    reference: XGBModel, other: XGBModel, silo: str | None, *, require_same_base: bool
) -> None:
    check_same_family(reference, other, silo)
    if other.num_class != reference.num_class:
        raise MergeError(
            f"{who(silo)} trained {other.num_class} classes; the global model "
            f"{reference.num_class}",
            silo=silo,
        )
    names = (
        reference.doc["learner"].get("feature_names"),
        other.doc["learner"].get("feature_names"),
    )
    if names[0] and names[1] and names[0] != names[1]:
        raise MergeError(f"{who(silo)} uses other feature names than the global model", silo=silo)
    f32 = np.float32
    same = np.array_equal(
        np.asarray(other.base_scores, dtype=f32), np.asarray(reference.base_scores, dtype=f32)
    )
    if require_same_base and not same:
        raise MergeError(
            f"{who(silo)}'s trees have base score {list(other.base_scores)}, the global model "
            f"{list(reference.base_scores)}: they were not grown from the current global model",
            silo=silo,
        )


def _raw_trees(doc: dict[str, Any]) -> list[dict[str, Any]]:
    return list(doc["learner"]["gradient_booster"]["model"]["trees"])


def _scaled(tree: dict[str, Any], weight: float) -> dict[str, Any]:
    """A copy of `tree` whose outputs are multiplied by `weight` (rounded to float32, the
    precision XGBoost stores, so the written number is exactly what every reader uses)."""
    out = copy.deepcopy(tree)
    left = out["left_children"]
    conditions = out["split_conditions"]
    for i, child in enumerate(left):
        if child == -1:
            conditions[i] = float(np.float32(conditions[i] * weight))
    out["base_weights"] = [float(np.float32(v * weight)) for v in out["base_weights"]]
    return out


def _with_trees(
    doc: dict[str, Any], trees: list[dict[str, Any]], base_score: Sequence[float], per_round: int
) -> dict:
    """Install `trees` (renumbered, `per_round` per iteration) and the base score into `doc`."""
    learner = doc["learner"]
    model = learner["gradient_booster"]["model"]
    renumbered = []
    for i, tree in enumerate(trees):
        renumbered.append({**tree, "id": i})
    model["trees"] = renumbered
    model["tree_info"] = [i % per_round for i in range(len(trees))]
    model["iteration_indptr"] = list(range(0, len(trees) + 1, per_round))
    model["gbtree_model_param"] = {
        **model["gbtree_model_param"],
        "num_trees": str(len(trees)),
        "num_parallel_tree": "1",
    }
    learner["learner_model_param"]["base_score"] = format_base_score(base_score)
    # best_iteration and similar attributes describe one silo's training, not the merge.
    learner["attributes"] = {}
    return doc
