"""Depth-wise tree growth from securely summed level histograms (service side).

    grower = start_tree(config, cuts, tree=t, rows=N, counter=c)   # request: root histogram
    while True:
        answer = receive_level(grower, level_sum, next_counter)    # LevelRequest or TreeDone
        if isinstance(answer, TreeDone): break

Per level the service evaluates every node of that depth that has a histogram, splits those
with a valid split (nodes are expanded in id order, children numbered as XGBoost numbers them:
left = next id, right = the one after), and asks the silos for the histograms the next level
needs. Subtraction trick: per split only the child with fewer rows federation-wide is
requested (the left one on a tie); its sibling's histogram is parent - child, exact on the
integers. Children at max_depth, or too small to ever split again (fewer than 2 *
min_rows_per_node rows or 2 * min_child_weight hessian), need no histogram and become leaves.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from aggregation.trees.secure_hist.splits import SplitChoice, Stats, best_split, calc_weight
from schemas.secure_hist.errors import HistVectorError, UnknownNodeError
from schemas.secure_hist.protocol import (
    HistLayout,
    HistRunConfig,
    LevelRequest,
    NodeCount,
    NodeSplit,
    TreeDone,
    from_modular,
    split_threshold,
)


@dataclass
class Node:
    """One node of a tree being grown (the export reads these)."""

    id: int
    parent: int
    depth: int
    stats: Stats
    split: SplitChoice | None = None
    left: int = -1
    right: int = -1
    threshold: float = 0.0
    value: float = 0.0  # leaf value (eta applied), float32-rounded


@dataclass
class TreeGrower:
    """The service's state for one tree."""

    config: HistRunConfig
    cuts: list[np.ndarray]
    layout: HistLayout
    tree: int
    nodes: list[Node] = field(default_factory=list)
    hists: dict[int, np.ndarray] = field(default_factory=dict)  # node -> (3, total) int64
    request: LevelRequest | None = None
    derive: set[int] = field(default_factory=set)  # larger children to get by subtraction


def start_tree(
    config: HistRunConfig, cuts: Sequence[np.ndarray], *, tree: int, rows: int, counter: int
) -> TreeGrower:
    """A grower whose first request (``grower.request``) asks for the root's histograms."""
    grower = TreeGrower(config, list(cuts), HistLayout.from_cuts(cuts), tree)
    grower.nodes.append(Node(0, -1, 0, Stats(0, 0, rows)))
    grower.request = LevelRequest(tree, 0, counter, (), (NodeCount(0, rows),))
    return grower


def receive_level(grower: TreeGrower, total: np.ndarray, counter: int) -> LevelRequest | TreeDone:
    """Take the summed level vector of ``grower.request``; return the next request or TreeDone.

    Raises
    ------
    HistVectorError
        The sum does not have one block per requested node.
    """
    request = grower.request
    if request is None:
        raise UnknownNodeError("no level is pending for this tree", tree=grower.tree)
    grower.layout.check_level(
        total, len(request.compute), silo=None, tree=grower.tree, depth=request.depth
    )
    blocks = from_modular(total).reshape(len(request.compute), 3, grower.layout.total)
    for ask, block in zip(request.compute, blocks, strict=True):
        _store(grower, ask.node, block.copy(), request.depth)
    _subtract_siblings(grower, request)
    splits = _split_level(grower, request.depth)
    compute = _next_compute(grower, splits)
    wire = tuple(_wire(grower, n) for n in splits)
    if not compute:
        grower.request = None
        return TreeDone(grower.tree, wire, _finish_leaves(grower))
    grower.request = LevelRequest(grower.tree, request.depth + 1, counter, wire, compute)
    return grower.request


def _store(grower: TreeGrower, node_id: int, block: np.ndarray, depth: int) -> None:
    node = grower.nodes[node_id] if node_id < len(grower.nodes) else None
    if node is None or node.depth != depth:
        raise UnknownNodeError("histogram for an unknown node", tree=grower.tree, node=node_id)
    # every row lies in exactly one slot (bin or missing) of feature 0
    g, h, rows = (int(v) for v in block[:, : grower.layout.n_bins[0] + 1].sum(axis=1))
    node.stats = Stats(g, h, rows)  # the summed histogram is the truth (silos may have left)
    grower.hists[node_id] = block


def _subtract_siblings(grower: TreeGrower, request: LevelRequest) -> None:
    asked = {c.node for c in request.compute}
    for s in request.splits:
        small, large = (s.left, s.right) if s.left in asked else (s.right, s.left)
        if large in grower.derive:
            block = grower.hists[s.node] - grower.hists[small]
            _store(grower, large, block, request.depth)
    grower.hists = {n: h for n, h in grower.hists.items() if grower.nodes[n].depth == request.depth}


def _expandable(grower: TreeGrower, stats: Stats, depth: int) -> bool:
    p = grower.config.params
    scale = grower.config.codec.scale
    return (
        depth < p.max_depth
        and stats.rows >= 2 * grower.config.min_rows_per_node
        and stats.h / scale >= 2 * p.min_child_weight
    )


def _split_level(grower: TreeGrower, depth: int) -> list[int]:
    cfg = grower.config
    split_nodes = []
    for node in grower.nodes:
        if node.depth != depth or node.id not in grower.hists:
            continue
        choice = best_split(
            grower.hists[node.id],
            node.stats,
            grower.layout,
            cfg.params,
            cfg.codec.scale,
            cfg.min_rows_per_node,
        )
        if choice is None:
            continue
        node.split = choice
        node.threshold = split_threshold(grower.cuts[choice.feature], choice.bin)
        node.left, node.right = len(grower.nodes), len(grower.nodes) + 1
        grower.nodes.append(Node(node.left, node.id, depth + 1, choice.left))
        grower.nodes.append(Node(node.right, node.id, depth + 1, choice.right))
        split_nodes.append(node.id)
    return split_nodes


def _next_compute(grower: TreeGrower, splits: list[int]) -> tuple[NodeCount, ...]:
    compute: list[NodeCount] = []
    pending: set[int] = set()
    for n in splits:
        node = grower.nodes[n]
        left, right = grower.nodes[node.left], grower.nodes[node.right]
        need = [c for c in (left, right) if _expandable(grower, c.stats, c.depth)]
        if not need:
            continue
        small, large = (left, right) if left.stats.rows <= right.stats.rows else (right, left)
        compute.append(NodeCount(small.id, small.stats.rows))
        if large in need:
            pending.add(large.id)
    grower.derive = pending
    return tuple(compute)


def _wire(grower: TreeGrower, node_id: int) -> NodeSplit:
    node = grower.nodes[node_id]
    assert node.split is not None
    s = node.split
    return NodeSplit(node.id, s.feature, s.bin, s.default_left, node.left, node.right)


def _finish_leaves(grower: TreeGrower) -> tuple[tuple[int, float], ...]:
    cfg, scale = grower.config, grower.config.codec.scale
    out = []
    for node in grower.nodes:
        if node.left == -1:
            w = calc_weight(node.stats.g / scale, node.stats.h / scale, cfg.params)
            node.value = float(np.float32(w * cfg.params.eta))
            out.append((node.id, node.value))
    return tuple(out)


def check_vector(grower: TreeGrower, vector: np.ndarray, silo: str) -> None:
    """Raise HistVectorError naming `silo` unless its level vector fits the pending request."""
    if grower.request is None:
        raise HistVectorError("no level is pending", silo=silo, tree=grower.tree)
    grower.layout.check_level(
        vector, len(grower.request.compute), silo=silo, tree=grower.tree,
        depth=grower.request.depth,
    )  # fmt: skip
