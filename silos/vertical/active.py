"""The active party of vertical SecureBoost: labels and some features; drives training.

Per tree it computes logistic gradients and hessians, packs and encrypts them once, and
sends them to every passive party. The tree grows level by level: for each node the active
party asks only for the smaller child's encrypted histograms and gets the larger one by
subtraction from its parent's (all in the clear on its side, after decryption); it picks the
best split over its own features and every party's (XGBoost's gain), applies its own splits
and asks the winning passive party for the left rows of the others. Its tree records, at a
passive node, the party, its feature index and bin but never the threshold.

`fit_plain` runs the same growth with every column in one place: the losslessness reference.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from schemas.vertical import (
    MAX_FEATURES,
    EncryptedGradients,
    HistogramBatch,
    HistogramRequest,
    InstanceSplit,
    NodeRows,
    PredictRequest,
    PredictRoutes,
    SplitDecision,
    VerticalMessage,
)
from silos.vertical import he
from silos.vertical.passive import from_bitmap, to_bitmap
from silos.vertical.trees import (
    MAX_ROWS,
    BoostParams,
    Node,
    Split,
    Tree,
    best_split,
    bin_columns,
    leaf_weight,
    logistic_grad,
    plain_histograms,
    quantile_cuts,
    route,
)

Hists = list[np.ndarray]
HistFn = Callable[[list[tuple[int, np.ndarray]]], dict[int, Hists]]
SplitFn = Callable[[int, np.ndarray, Split, Hists], np.ndarray]  # node, rows, split, its hists
Send = Callable[[str, str, object], VerticalMessage]


class ActiveError(ValueError):
    """A reply the active party refuses; names the party."""


def grow_tree(
    n_rows: int,
    gi: np.ndarray,
    hi: np.ndarray,
    p: BoostParams,
    hist_for: HistFn,
    split_rows: SplitFn,
) -> Tree:
    """Level-wise growth with histogram subtraction (shared by every trainer here)."""
    tree = Tree()
    rows0 = np.arange(n_rows)
    level = [(0, rows0, hist_for([(0, rows0)])[0])]
    for depth in range(p.max_depth + 1):
        pending = []  # (small id, small rows, large id, large rows, parent hists)
        for nid, rows, hists in level:
            split = best_split(hists, p) if depth < p.max_depth else None
            if split is None:
                sums = np.array([[gi[rows].sum(), hi[rows].sum(), len(rows)]], dtype=np.int64)
                tree.nodes[nid] = Node(weight=leaf_weight(sums, p))
                continue
            mask = split_rows(nid, rows, split, hists)
            left, right = rows[mask], rows[~mask]
            # owner "" until the trainer resolves the global feature index to its party
            node = Node(
                owner="", feature=split.feature, bin=split.bin, left=2 * nid + 1, right=2 * nid + 2
            )
            tree.nodes[nid] = node
            small = (node.left, left, node.right, right)
            if len(right) < len(left):
                small = (node.right, right, node.left, left)
            pending.append((*small, hists))
        if not pending:
            break
        need = depth + 1 < p.max_depth
        got = hist_for([(s, r) for s, r, *_ in pending]) if need else {}
        level = []
        for s, srows, big, brows, parent in pending:
            sh = got.get(s, [])
            bh = [ph - c for ph, c in zip(parent, sh, strict=True)] if need else []
            level += [(s, srows, sh), (big, brows, bh)]
    return tree


def fit_plain(bins: np.ndarray, y: np.ndarray, p: BoostParams) -> tuple[list[Tree], np.ndarray]:
    """All columns in one place, same arithmetic: trees and the training margin."""
    if len(y) > MAX_ROWS:
        raise ValueError(f"{len(y)} rows; vertical SecureBoost takes at most {MAX_ROWS}")
    n_bins = [int(bins[:, f].max()) + 1 for f in range(bins.shape[1])]
    margin = np.zeros(len(y))
    trees = []
    for _ in range(p.n_trees):
        g, h = logistic_grad(y, margin)
        gl, hl = he.encode_gh(g, h)
        gi = np.array(gl, dtype=np.int64) - (1 << he.FRAC_BITS)
        hi = np.array(hl, dtype=np.int64)

        def hist_for(
            nodes: list[tuple[int, np.ndarray]], gi: np.ndarray = gi, hi: np.ndarray = hi
        ) -> dict[int, Hists]:
            return {nid: plain_histograms(bins, r, gi, hi, n_bins) for nid, r in nodes}

        def split_rows(nid: int, rows: np.ndarray, s: Split, _: Hists) -> np.ndarray:
            return bins[rows, s.feature] <= s.bin

        tree = grow_tree(len(y), gi, hi, p, hist_for, split_rows)
        masks = {k: bins[:, n.feature] <= n.bin for k, n in tree.nodes.items() if not n.is_leaf}
        margin = margin + route(tree, masks, len(y))
        trees.append(tree)
    return trees, margin


@dataclass
class ActiveParty:
    name: str
    run: str
    X: np.ndarray  # aligned rows x own features
    y: np.ndarray  # 0/1
    passives: dict[str, int]  # passive party -> its number of features, in feature order
    params: BoostParams = field(default_factory=BoostParams)
    keys: he.KeyPair = field(default_factory=he.generate_keypair)
    trees: list[Tree] = field(default_factory=list)

    def __post_init__(self) -> None:
        p = self.params
        if len(self.y) > MAX_ROWS:
            raise ActiveError(f"party {self.name!r}: {len(self.y)} rows, at most {MAX_ROWS}")
        for party, count in self.passives.items():
            if not 0 <= count <= MAX_FEATURES:
                raise ActiveError(
                    f"party {party!r} brings {count} features; at most {MAX_FEATURES}"
                )
        self._passive_nb: dict[str, list[int]] = {}  # each passive feature's bins, fixed
        self.cuts = [quantile_cuts(self.X[:, f], p.n_bins) for f in range(self.X.shape[1])]
        self.bins = bin_columns(self.X, self.cuts)
        self._nb = [len(c) + 1 for c in self.cuts]
        self.margin = np.zeros(len(self.y))
        owners = [(self.name, f) for f in range(self.X.shape[1])]
        for party, count in self.passives.items():
            owners += [(party, f) for f in range(count)]
        self.owners = owners  # global feature index -> (party, local feature)

    def fit(self, send: Send) -> list[Tree]:
        self.send_key(send)
        for _ in range(self.params.n_trees):
            self.trees.append(self.fit_tree(send))
        return self.trees

    def send_key(self, send: Send) -> None:
        """The Paillier public key to every passive party, before the first tree."""
        pub = self.keys.public
        for party in self.passives:
            send(
                self.name,
                party,
                he.key_message(self.run, self.name, pub),
            )

    def fit_tree(self, send: Send) -> Tree:
        t, n, pub = len(self.trees), len(self.y), self.keys.public
        g, h = logistic_grad(self.y, self.margin)
        gl, hl = he.encode_gh(g, h)
        cts = he.to_bytes(pub, he.encrypt_many(self.keys, he.pack_rows(gl, hl)))
        for party in self.passives:
            send(
                self.name,
                party,
                EncryptedGradients(
                    run=self.run, sender=self.name, tree=t, n_rows=n, ciphertexts=cts
                ),
            )
        gi = np.array(gl, dtype=np.int64) - (1 << he.FRAC_BITS)
        hi = np.array(hl, dtype=np.int64)
        splits: dict[int, Node] = {}
        left_masks: dict[int, np.ndarray] = {}

        def hist_for(nodes: list[tuple[int, np.ndarray]]) -> dict[int, Hists]:
            out = {nid: plain_histograms(self.bins, r, gi, hi, self._nb) for nid, r in nodes}
            req = [NodeRows(node=nid, rows=to_bitmap(np.isin(np.arange(n), r))) for nid, r in nodes]
            for party in self.passives:
                reply = send(
                    self.name,
                    party,
                    HistogramRequest(run=self.run, sender=self.name, tree=t, nodes=req),
                )
                for nid, hists in self._decrypt(reply, party, t, dict(nodes), gi, hi).items():
                    out[nid] += hists
            return out

        def split_rows(nid: int, rows: np.ndarray, s: Split, hists: Hists) -> np.ndarray:
            party, f = self.owners[s.feature]
            if party == self.name:
                left_masks[nid] = self.bins[:, f] <= s.bin
                return left_masks[nid][rows]
            node_rows = to_bitmap(np.isin(np.arange(n), rows))
            reply = send(
                self.name,
                party,
                SplitDecision(
                    run=self.run,
                    sender=self.name,
                    tree=t,
                    node=nid,
                    feature=f,
                    bin=s.bin,
                    rows=node_rows,
                ),
            )
            if not isinstance(reply, InstanceSplit) or reply.node != nid or reply.tree != t:
                raise ActiveError(
                    f"party {party!r} answered the split of node {nid} in tree "
                    f"{t} with {reply.kind}"
                )
            left = from_bitmap(reply.left, n, party, f"instance split of node {nid}")
            lr = rows[left[rows]]  # must be the left side of the histogram it sent
            want = hists[s.feature][: s.bin + 1].sum(axis=0)
            if [gi[lr].sum(), hi[lr].sum(), len(lr)] != want.tolist():
                raise ActiveError(
                    f"party {party!r} split node {nid} of tree {t} into rows that do not "
                    f"match its histogram ({len(lr)} rows left, its bins give {want[2]})"
                )
            splits[nid] = Node(owner=party, feature=f, record=reply.record)
            left_masks[nid] = left
            return left[rows]

        tree = grow_tree(n, gi, hi, self.params, hist_for, split_rows)
        for nid, node in tree.nodes.items():
            if node.is_leaf:
                continue
            if nid in splits:
                node.owner, node.feature, node.record = (
                    splits[nid].owner,
                    splits[nid].feature,
                    splits[nid].record,
                )
            else:
                node.owner, node.feature = self.name, self.owners[node.feature][1]
        self.margin = self.margin + route(tree, left_masks, n)
        return tree

    def _decrypt(
        self,
        reply: VerticalMessage,
        party: str,
        tree: int,
        nodes: dict[int, np.ndarray],
        gi: np.ndarray,
        hi: np.ndarray,
    ) -> dict[int, Hists]:
        """The histograms of `nodes` (node -> rows) from `party`'s reply, each bin's (G, H,
        count) checked against what the node's rows can give: a peer's bad sums end the run
        naming it, never as an overflow or a shape error here."""
        if not isinstance(reply, HistogramBatch) or reply.tree != tree:
            raise ActiveError(
                f"party {party!r} answered a histogram request of tree {tree} with {reply.kind}"
            )
        got = {h.node: h for h in reply.histograms}
        if sorted(got) != sorted(nodes) or len(reply.histograms) != len(nodes):
            raise ActiveError(
                f"party {party!r} sent histograms of nodes {sorted(got)} in tree "
                f"{tree}; asked for {sorted(nodes)}"
            )
        pub, per = self.keys.public, self.keys.public.bins_per_ciphertext
        cts: list[int] = []
        for nid, msg in got.items():
            if len(msg.n_bins) != self.passives[party]:
                raise ActiveError(
                    f"party {party!r} sent {len(msg.n_bins)} features for node "
                    f"{nid} of tree {tree}; expected {self.passives[party]}"
                )
            if msg.pack_bits != he.PACK_BITS:
                raise ActiveError(
                    f"party {party!r} packed the bin sums of node {nid} in tree {tree} "
                    f"{msg.pack_bits} bits apart; this party reads {he.PACK_BITS} "
                    "(the parties run different fedsilo versions)"
                )
            # a feature's bins are its own and fixed: set by the first histogram, at most the
            # run's n_bins (children are parents minus siblings, bin by bin)
            fixed = self._passive_nb.setdefault(party, list(msg.n_bins))
            if msg.n_bins != fixed or not all(1 <= nb <= self.params.n_bins for nb in fixed):
                raise ActiveError(
                    f"party {party!r} sent bin counts for node {nid} of tree {tree} that "
                    f"differ from its first histogram's or exceed the run's {self.params.n_bins}"
                )
            node_cts = he.from_bytes(pub, msg.ciphertexts, party, f"histogram of node {nid}")
            need = sum(-(-nb // per) for nb in msg.n_bins)
            if len(node_cts) != need:
                raise ActiveError(
                    f"party {party!r} sent {len(node_cts)} ciphertexts for node {nid} "
                    f"of tree {tree}; its bins need {need}"
                )
            cts += node_cts
        plain = he.decrypt_many(self.keys, cts)  # every node's at once, on all cores
        out: dict[int, Hists] = {}
        k = 0
        for nid, msg in got.items():
            rows = nodes[nid]
            total = (int(gi[rows].sum()), int(hi[rows].sum()), len(rows))
            hists = []
            for f, nb in enumerate(msg.n_bins):
                m = -(-nb // per)
                trip = he.unpack_bins(pub, plain[k : k + m], nb)
                k += m
                # honest bins: 0 <= count <= the node's rows, |G| and H at most count * 2^P
                # (g in [-1, 1], h in [0, 1]), and each feature's bins add up to the node
                if tuple(map(sum, zip(*trip, strict=True))) != total or not all(
                    0 <= c and abs(g) <= c << he.FRAC_BITS and 0 <= h <= c << he.FRAC_BITS
                    for g, h, c in trip
                ):
                    raise ActiveError(
                        f"party {party!r} sent bin sums for feature {f} of node {nid} in "
                        f"tree {tree} that the node's {len(rows)} rows cannot give"
                    )
                hists.append(np.array(trip, dtype=np.int64).reshape(nb, 3))
            out[nid] = hists
        return out

    def predict_margin(self, X: np.ndarray, send: Send) -> np.ndarray:
        """Joint prediction for rows aligned with the passive parties' `set_predict_rows`."""
        bins = bin_columns(X, self.cuts)
        n = len(X)
        routes: dict[tuple[str, int], np.ndarray] = {}
        for party in self.passives:
            recs = sorted(
                {nd.record for t in self.trees for nd in t.nodes.values() if nd.owner == party}
            )
            if not recs:
                continue
            reply = send(
                self.name,
                party,
                PredictRequest(run=self.run, sender=self.name, n_rows=n, records=recs),
            )
            if not isinstance(reply, PredictRoutes) or reply.records != recs:
                raise ActiveError(
                    f"party {party!r} answered a prediction request with "
                    f"{reply.kind} for other records"
                )
            width = (n + 7) // 8
            for k, r in enumerate(recs):
                routes[(party, r)] = from_bitmap(
                    reply.left[k * width : (k + 1) * width], n, party, f"route of record {r}"
                )
        margin = np.zeros(n)
        for tree in self.trees:
            masks = {}
            for nid, nd in tree.nodes.items():
                if nd.is_leaf:
                    continue
                masks[nid] = (
                    bins[:, nd.feature] <= nd.bin
                    if nd.owner == self.name
                    else routes[(nd.owner or "", nd.record)]
                )
            margin += route(tree, masks, n)
        return margin
