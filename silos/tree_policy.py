"""The silo's own limits on tree-model work, checked before any data is touched.

A silo operator may cap how deep or how many trees the federation can grow on the silo's data
(deeper trees with fewer rows per leaf memorise more about individual rows), which libraries
and modes it accepts, and whether it joins XGBoost's collective at all: that mode shows the
silo's per-round gradient histograms to the aggregation service. ``secure-hist`` (only sums
reach the service) must be allowed explicitly too, with the smallest node, federation-wide,
whose histograms the silo will report (`min_rows_per_node`).
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from schemas.tree_params import MAX_DEPTH_LIMIT, MAX_TREES_PER_ROUND, TreeKind, TreeMode, TreeSpec


class TreePolicy(BaseModel):
    """Tree-model section of a silo's policy (``[policy.trees]`` in silo.toml)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    allowed_kinds: tuple[TreeKind, ...] = ("xgboost", "lightgbm")
    allowed_modes: tuple[TreeMode, ...] = ("bagging", "cyclic")
    max_depth: int = Field(default=8, ge=1, le=MAX_DEPTH_LIMIT)
    max_leaves: int = Field(default=256, ge=2)
    max_trees_per_round: int = Field(default=20, ge=1, le=MAX_TREES_PER_ROUND)
    min_rows_per_leaf: int = Field(
        default=1, ge=0, description="LightGBM min_data_in_leaf must be at least this"
    )
    min_rows_per_node: int = Field(
        default=1,
        ge=1,
        description="secure-hist: no histogram or leaf of fewer rows federation-wide (the run's "
        "secure_hist.min_rows_per_node must be at least this; every level request is checked)",
    )


def policy_violation_trees(policy: TreePolicy, spec: TreeSpec, silo: str) -> str | None:
    """Return why silo `silo` must refuse this tree run, or None when its policy allows it.

    Depth is compared as the deepest tree the parameters allow: XGBoost's ``max_depth``;
    LightGBM's ``max_depth``, or ``num_leaves - 1`` when it is -1 (unlimited).
    """
    if spec.kind not in policy.allowed_kinds:
        return (
            f"silo {silo} policy allows tree libraries {list(policy.allowed_kinds)}; "
            f"the run asks for {spec.kind!r}"
        )
    if spec.mode not in policy.allowed_modes:
        hint = " (it reveals this silo's gradient histograms)" if spec.mode == "collective" else ""
        return (
            f"silo {silo} policy allows modes {list(policy.allowed_modes)}; "
            f"the run asks for {spec.mode!r}{hint}"
        )
    depth = spec.params.effective_max_depth()
    if depth > policy.max_depth:
        return (
            f"silo {silo} policy allows trees of depth at most {policy.max_depth}; the run's "
            f"parameters allow depth {depth}"
        )
    leaves = getattr(spec.params, "num_leaves", 2**depth)
    if leaves > policy.max_leaves:
        return (
            f"silo {silo} policy allows at most {policy.max_leaves} leaves per tree; "
            f"the run allows {leaves}"
        )
    if spec.trees_per_round > policy.max_trees_per_round:
        return (
            f"silo {silo} policy allows at most {policy.max_trees_per_round} trees per round; the "
            f"run asks for {spec.trees_per_round}"
        )
    hist = spec.secure_hist
    if hist is not None and hist.min_rows_per_node < policy.min_rows_per_node:
        return (
            f"silo {silo} policy needs secure_hist.min_rows_per_node >= "
            f"{policy.min_rows_per_node}; the run sets {hist.min_rows_per_node}"
        )
    min_rows = getattr(spec.params, "min_data_in_leaf", None)
    if min_rows is not None and min_rows < policy.min_rows_per_leaf:
        return (
            f"silo {silo} policy needs min_data_in_leaf >= {policy.min_rows_per_leaf}; the run "
            f"sets {min_rows}"
        )
    return None
