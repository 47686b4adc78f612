"""Merging silos' new LightGBM trees into one global LightGBM text model (bagging and cyclic).

The bagging rule is the one in `xgb_merge`: F' = F + sum_k (n_k / N) * g_k. It is applied
the way LightGBM's own `Tree::Shrinkage` scales a tree: every ``leaf_value`` and
``internal_value`` of silo k's new trees is multiplied by n_k / N, and so is the tree's
``shrinkage`` (kept for the record; prediction reads only leaf values).

LightGBM has no separate base score: with ``boost_from_average`` a silo's first tree already
holds the silo's average as a bias in its leaves, so scaling that tree by n_k / N gives the
example-weighted average of the silos' constant terms in the first round, and nothing more is
needed. Continued training (``init_model``) adds no bias.

The output header is the base model's (the first silo's in round 1, silos sorted by name),
with ``feature_infos`` widened to the union of every model's ranges, ``tree_sizes``
recomputed, and the ``feature_importances`` section recounted over all trees, so that
`lightgbm.Booster(model_str=...)` loads a self-consistent model.

Cyclic: the silo's new trees are appended unscaled (`append_lgb`).

Multiclass: every model holds whole boosting rounds of K trees (`lgb_model`), scaled tree by
tree and appended whole, so tree i still adds to class i % K in the merged model.
"""

from __future__ import annotations

from collections.abc import Mapping

from aggregation.trees.lgb_model import Block, LGBModel, dump_lgb, format_number, parse_lgb
from aggregation.trees.merge_rules import check_same_family, parse_updates, who
from schemas.tree_errors import MergeError

_SCALED_LISTS = ("leaf_value", "internal_value")


def merge_bagging_lgb(base: bytes | None, updates: Mapping[str, tuple[bytes, int]]) -> bytes:
    """Merge every silo's new trees into the next global model.

    Parameters
    ----------
    base
        The current global model (LightGBM text bytes), or None in the first round.
    updates
        Silo name -> (text bytes of a model holding only that silo's new trees, the number
        of training rows it used). The result does not depend on the mapping's order.

    Raises
    ------
    MergeError
        No updates, a non-positive row count, or models that disagree on objective, feature
        count or feature names.
    TreeModelFormatError, UnsupportedTreeError
        A model does not parse (validate updates first with `validate.validate_tree_update`).
    """
    weights, parsed = parse_updates(updates, parse_lgb)
    silos = list(weights)
    base_model = parse_lgb(base) if base is not None else None
    template = base_model or parsed[silos[0]]
    for silo in silos:
        check_compatible(template, parsed[silo], silo)
    trees: list[Block] = [t.lines for t in base_model.trees] if base_model else []
    for silo in silos:
        trees.extend(_scaled(t.lines, weights[silo]) for t in parsed[silo].trees)
    models = [m for m in (base_model, *parsed.values()) if m is not None]
    return _assemble(template, models, trees)


def append_lgb(base: bytes | None, update: bytes, silo: str | None = None) -> bytes:
    """Cyclic hand-off: append one silo's new trees, unscaled, to the global model."""
    new = parse_lgb(update)
    if base is None:
        return _assemble(new, [new], [t.lines for t in new.trees])
    base_model = parse_lgb(base)
    check_compatible(base_model, new, silo)
    trees = [t.lines for t in (*base_model.trees, *new.trees)]
    return _assemble(base_model, [base_model, new], trees)


def check_compatible(reference: LGBModel, other: LGBModel, silo: str | None) -> None:
    check_same_family(reference, other, silo)
    if other.num_class != reference.num_class:
        raise MergeError(
            f"{who(silo)} trained {other.num_class} classes; the global model "
            f"{reference.num_class}",
            silo=silo,
        )
    if other.header_value("feature_names") != reference.header_value("feature_names"):
        raise MergeError(f"{who(silo)} uses other feature names than the global model", silo=silo)


def _scaled(lines: Block, weight: float) -> Block:
    out: Block = []
    for key, value in lines:
        if key in _SCALED_LISTS and value:
            value = " ".join(format_number(float(v) * weight) for v in value.split())
        elif key == "shrinkage" and value:
            value = format_number(float(value) * weight)
        out.append((key, value))
    return out


def _assemble(template: LGBModel, models: list[LGBModel], trees: list[Block]) -> bytes:
    infos = _union_feature_infos(models)
    header = [
        ("feature_infos", infos) if k == "feature_infos" else (k, v) for k, v in template.header
    ]
    names = (template.header_value("feature_names") or "").split()
    trailer = _with_importances(template.trailer, names, trees)
    return dump_lgb(header, trees, trailer)


def _union_feature_infos(models: list[LGBModel]) -> str:
    """Per numerical feature, the widest ``[min:max]`` any model saw ("none" if none did)."""
    columns = [(m.header_value("feature_infos") or "").split() for m in models]
    merged = []
    for entries in zip(*columns, strict=True):
        ranges = [_range(e) for e in entries]
        known = [r for r in ranges if r is not None]
        if not known:
            merged.append(entries[0])
            continue
        low = min(r[0] for r in known)
        high = max(r[1] for r in known)
        merged.append(f"[{format_number(low)}:{format_number(high)}]")
    return " ".join(merged)


def _range(entry: str) -> tuple[float, float] | None:
    if not (entry.startswith("[") and entry.endswith("]")):
        return None
    low, _, high = entry[1:-1].partition(":")
    try:
        return float(low), float(high)
    except ValueError:
        return None


def _with_importances(trailer: str, names: list[str], trees: list[Block]) -> str:
    """Replace the trailer's split-count importances with counts over `trees`."""
    counts = [0] * len(names)
    for lines in trees:
        fields = dict(lines)
        features = (fields.get("split_feature") or "").split()
        gains = (fields.get("split_gain") or "").split()
        for feature, gain in zip(features, gains, strict=False):
            if float(gain) > 0:
                counts[int(feature)] += 1
    ranked = sorted((i for i, c in enumerate(counts) if c > 0), key=lambda i: (-counts[i], i))
    block = ["feature_importances:", *(f"{names[i]}={counts[i]}" for i in ranked)]
    text = trailer.split("\n")
    if "feature_importances:" not in text:
        return trailer
    start = text.index("feature_importances:")
    end = start + 1
    while end < len(text) and text[end] != "":
        end += 1
    return "\n".join([*text[:start], *block, *text[end:]])
