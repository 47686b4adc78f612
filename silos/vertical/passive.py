"""The passive party of vertical SecureBoost: features, no labels.

It bins its own columns (quantile bins), receives one Paillier ciphertext per row from the
active party and, per requested node, multiplies them into encrypted bin sums (an addition
under Paillier) for every feature, packed 13 bins to a ciphertext. It never sees a
gradient in the clear: it holds no private key. When one of its features wins a split it
keeps the threshold in its lookup table under a fresh record id and returns only the
rows that go left; at prediction it routes rows through its own records.

It answers only what an honest tree growth asks (each refusal names the active party): one
Paillier key, before the first gradients; a gradient ciphertext per aligned row, trees in
order and no more than the run's; histograms and splits only for the current tree's nodes
and at most once each. It tracks each node's instance space itself (tree numbering: the
children of k are 2k + 1 and 2k + 2): the root is every row; after its own split the
children are the rows it sent back; after another party's split, the first child the active
party names must lie inside its parent and the sibling is the rest. Nodes below max_depth
only, and no child under `BoostParams.min_child_rows` rows (fewer cannot carry the hessian
min_child_weight asks). Every histogram ciphertext it returns carries fresh randomness of its
own (`he.rerandomize`). It routes rows for prediction only once training is over (routes
during training would show the active party its bins).
"""

from __future__ import annotations

import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from multiprocessing import get_context

import gmpy2
import numpy as np

from schemas.vertical import (
    Ack,
    EncryptedGradients,
    EncryptedHistogram,
    HeKey,
    HistogramBatch,
    HistogramRequest,
    InstanceSplit,
    PredictRequest,
    PredictRoutes,
    SplitDecision,
    VerticalMessage,
)
from silos.vertical import he
from silos.vertical.trees import MAX_ROWS, BoostParams, bin_columns, depth_of, quantile_cuts


class PassiveError(ValueError):
    """A message the passive party refuses; names the sending party."""


def to_bitmap(mask: np.ndarray) -> bytes:
    return np.packbits(mask.astype(bool)).tobytes()


def from_bitmap(data: bytes, n_rows: int, party: str, what: str) -> np.ndarray:
    if len(data) != (n_rows + 7) // 8:
        raise PassiveError(
            f"{what} from party {party!r}: bitmap of {len(data)} bytes for {n_rows} rows"
        )
    return np.unpackbits(np.frombuffer(data, dtype=np.uint8), count=n_rows).astype(bool)


# a histogram request's state: (public key, ciphertexts, bin columns, n_bins,
# re-randomization table); a pool worker's own, set in the child by `_init_hist`
_HistState = tuple[he.PublicKey, list, list[list[int]], list[int], list]
_STATE: _HistState | None = None


def _init_hist(state: _HistState) -> None:
    global _STATE
    _STATE = state


def _hist_task(task: tuple[list[int], list[int]], state: _HistState | None = None) -> list[int]:
    state = state or _STATE
    assert state is not None
    pub, cts, cols, n_bins, table = state
    rows, feats = task
    out: list[int] = []
    k = 0
    while k < len(feats):
        f = feats[k]
        if k + 1 < len(feats) and len(rows) > 4 * n_bins[f] * n_bins[feats[k + 1]]:
            g = feats[k + 1]
            sa, sb = he.bucket_sums_pair(pub, cts, cols[f], cols[g], rows, n_bins[f], n_bins[g])
            out += he.compress(pub, sa) + he.compress(pub, sb)
            k += 2
        else:
            out += he.compress(pub, he.bucket_sums(pub, cts, cols[f], rows, n_bins[f]))
            k += 1
    return he.rerandomize(pub, out, table)


@dataclass
class PassiveParty:
    name: str
    run: str
    X: np.ndarray  # aligned rows x this party's features
    n_bins: int | None = None  # default: params.n_bins
    workers: int = field(default_factory=lambda: min(2, os.cpu_count() or 1))
    params: BoostParams = field(default_factory=BoostParams)  # the run's: trees, depth, ...
    cuts: list[np.ndarray] = field(default_factory=list)
    records: dict[int, tuple[int, float]] = field(default_factory=dict)  # record -> (f, thr)
    active: str = ""  # the party whose key it took; no other may drive it
    _pub: he.PublicKey | None = field(default=None, repr=False)
    _cts: list = field(default_factory=list, repr=False)
    _tree: int = -1
    _predict_X: np.ndarray | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if len(self.X) > MAX_ROWS:
            raise PassiveError(f"party {self.name!r}: {len(self.X)} rows, at most {MAX_ROWS}")
        self.n_bins = self.n_bins or self.params.n_bins
        self.cuts = [quantile_cuts(self.X[:, f], self.n_bins) for f in range(self.X.shape[1])]
        self.bins = bin_columns(self.X, self.cuts)
        self._cols = [self.bins[:, f].tolist() for f in range(self.X.shape[1])]
        self._nb = [len(c) + 1 for c in self.cuts]
        # the current tree: each known node's rows, nodes whose split is known (children in
        # _nodes), nodes whose histogram went out
        self._nodes: dict[int, np.ndarray] = {}
        self._decided: set[int] = set()
        self._answered: set[int] = set()
        self.trained = False  # set by the first prediction or by `load_records`

    @property
    def n_rows(self) -> int:
        return len(self.X)

    def load_records(self, records: dict[int, tuple[int, float]]) -> None:
        """A trained model's records (a prediction run): training is over by construction."""
        for r, (f, thr) in records.items():
            if not 0 <= f < len(self.cuts) or not np.isfinite(thr):
                raise PassiveError(
                    f"party {self.name!r}: record {r} of its model names feature {f} "
                    f"(it has {len(self.cuts)}) or a threshold that is not finite"
                )
        self.records = dict(records)
        self.trained = True

    def _refuse(self, sender: str, why: str) -> PassiveError:
        return PassiveError(f"party {self.name!r} refused a message from party {sender!r}: {why}")

    def handle(self, msg: VerticalMessage) -> VerticalMessage:
        if self.active and msg.sender != self.active:
            raise self._refuse(msg.sender, f"{msg.kind}: party {self.active!r} drives this run")
        if isinstance(msg, HeKey):
            if self._pub is not None:
                raise self._refuse(msg.sender, "a second public key")
            self._pub = he.peer_public_key(msg.n, msg.hs, self.name, msg.sender, he.KEY_BITS)
            self.active = msg.sender
            return self._ack()
        pub = self._need_key(msg.sender)
        if isinstance(msg, PredictRequest):
            return self._routes(msg)
        if self.trained:
            raise self._refuse(msg.sender, f"{msg.kind} after training ended (it predicted)")
        if isinstance(msg, EncryptedGradients):
            return self._gradients(msg, pub)
        if isinstance(msg, HistogramRequest):
            return self._histograms(msg)
        if isinstance(msg, SplitDecision):
            return self._split(msg)
        raise PassiveError(
            f"party {self.name!r} got an unexpected {msg.kind} message from party {msg.sender!r}"
        )

    def _ack(self) -> Ack:
        return Ack(run=self.run, sender=self.name)

    def _need_key(self, sender: str) -> he.PublicKey:
        if self._pub is None:
            raise PassiveError(
                f"party {self.name!r}: party {sender!r} sent a message before its public key"
            )
        return self._pub

    def _gradients(self, msg: EncryptedGradients, pub: he.PublicKey) -> Ack:
        what = f"gradients of tree {msg.tree}"
        if msg.tree != self._tree + 1 or msg.tree >= self.params.n_trees:
            raise self._refuse(
                msg.sender,
                f"{what}: the run has {self.params.n_trees} trees, next is {self._tree + 1}",
            )
        count = len(msg.ciphertexts) // pub.ciphertext_bytes
        if msg.n_rows != self.n_rows or count != self.n_rows:
            raise self._refuse(
                msg.sender,
                f"{what}: {count} ciphertexts for {msg.n_rows} rows; it holds "
                f"{self.n_rows} aligned rows",
            )
        self._cts = [gmpy2.mpz(c) for c in he.from_bytes(pub, msg.ciphertexts, msg.sender, what)]
        self._tree = msg.tree
        self._nodes = {0: np.ones(self.n_rows, dtype=bool)}
        self._decided, self._answered = set(), set()
        return self._ack()

    def _check_node(self, sender: str, tree: int, node: int, what: str) -> str:
        where = f"{what} of node {node} in tree {tree}"
        if tree != self._tree:
            raise self._refuse(sender, f"{where}: it holds the gradients of tree {self._tree}")
        if depth_of(node) >= self.params.max_depth:
            raise self._refuse(
                sender, f"{where}: deeper than the run's max_depth {self.params.max_depth} allows"
            )
        return where

    def _small(self, rows: np.ndarray) -> bool:
        return int(rows.sum()) < self.params.min_child_rows

    def _histograms(self, msg: HistogramRequest) -> HistogramBatch:
        pub = self._need_key(msg.sender)
        # check every node first, on copies: a refused request leaves the state as it was
        nodes, decided, answered = dict(self._nodes), set(self._decided), set(self._answered)
        feats = list(range(self.X.shape[1]))
        tasks = []
        for node in msg.nodes:
            where = self._check_node(msg.sender, msg.tree, node.node, "histogram")
            rows = from_bitmap(node.rows, self.n_rows, msg.sender, where)
            if node.node in answered:
                raise self._refuse(msg.sender, f"{where}: asked again")
            parent, sib = (node.node - 1) // 2, node.node + (1 if node.node % 2 else -1)
            if node.node not in nodes:  # a child of a split this party was not told of
                if node.node == 0 or parent not in nodes or parent in decided:
                    raise self._refuse(msg.sender, f"{where}: its parent was not split")
                if (rows & ~nodes[parent]).any() or self._small(rows):
                    raise self._refuse(
                        msg.sender,
                        f"{where}: not a subset of node {parent} or under "
                        f"{self.params.min_child_rows} rows",
                    )
                rest = nodes[parent] & ~rows
                if self._small(rest):
                    raise self._refuse(
                        msg.sender,
                        f"{where}: leaves its sibling {sib} under "
                        f"{self.params.min_child_rows} rows",
                    )
                nodes[node.node], nodes[sib] = rows, rest
                decided.add(parent)
            elif not np.array_equal(rows, nodes[node.node]):
                raise self._refuse(msg.sender, f"{where}: not the rows of that node")
            answered.add(node.node)
            idx = np.flatnonzero(rows).tolist()
            step = 2 * -(-len(feats) // (self.workers * 4))  # even: features pair up
            tasks.append([(idx, feats[i : i + step]) for i in range(0, len(feats), step)])
        self._nodes, self._decided, self._answered = nodes, decided, answered
        # passed along, never kept in the module: parties in threads of one process each
        # use their own; forked workers inherit it as the initializer's argument (no pickling)
        state = (pub, self._cts, self._cols, self._nb, he.rerandom_table(pub))
        flat = [t for group in tasks for t in group]
        if self.workers > 1 and len(flat) > 1 and len(self._cts) >= 2000:
            ctx = get_context("fork")
            with ProcessPoolExecutor(self.workers, ctx, _init_hist, (state,)) as pool:
                parts = list(pool.map(_hist_task, flat))
        else:
            parts = [_hist_task(t, state) for t in flat]
        out, k = [], 0
        for node, group in zip(msg.nodes, tasks, strict=True):
            cts = [c for part in parts[k : k + len(group)] for c in part]
            k += len(group)
            out.append(
                EncryptedHistogram(
                    run=self.run,
                    sender=self.name,
                    tree=msg.tree,
                    node=node.node,
                    n_bins=self._nb,
                    pack_bits=he.PACK_BITS,
                    ciphertexts=he.to_bytes(pub, cts),
                )
            )
        return HistogramBatch(run=self.run, sender=self.name, tree=msg.tree, histograms=out)

    def _split(self, msg: SplitDecision) -> InstanceSplit:
        where = self._check_node(msg.sender, msg.tree, msg.node, "split")
        if msg.feature >= len(self.cuts) or msg.bin >= self._nb[msg.feature] - 1:
            raise self._refuse(
                msg.sender, f"{where}: feature {msg.feature} bin {msg.bin} does not exist"
            )
        rows = from_bitmap(msg.rows, self.n_rows, msg.sender, where)
        if msg.node not in self._nodes or msg.node in self._decided:
            raise self._refuse(
                msg.sender,
                f"{where}: " + ("split already" if msg.node in self._decided else "no such node"),
            )
        if not np.array_equal(rows, self._nodes[msg.node]):
            raise self._refuse(msg.sender, f"{where}: not the rows of that node")
        left = rows & (self.bins[:, msg.feature] <= msg.bin)
        right = rows & ~left
        if self._small(left) or self._small(right):
            raise self._refuse(
                msg.sender,
                f"{where}: a side under {self.params.min_child_rows} rows, which no split "
                f"with min_child_weight {self.params.min_child_weight} gives",
            )
        record = len(self.records)
        self.records[record] = (msg.feature, float(self.cuts[msg.feature][msg.bin]))
        self._decided.add(msg.node)
        self._nodes[2 * msg.node + 1], self._nodes[2 * msg.node + 2] = left, right
        return InstanceSplit(
            run=self.run,
            sender=self.name,
            tree=msg.tree,
            node=msg.node,
            record=record,
            left=to_bitmap(left),
        )

    def set_predict_rows(self, X: np.ndarray) -> None:
        """Rows to predict, aligned with the active party's (by a PSI on their ids)."""
        self._predict_X = X

    def _routes(self, msg: PredictRequest) -> PredictRoutes:
        if not self.trained and self._tree != self.params.n_trees - 1:
            raise self._refuse(
                msg.sender,
                f"a prediction request after {self._tree + 1} of the run's "
                f"{self.params.n_trees} trees; only a trained model predicts",
            )
        X = self._predict_X
        if X is None or len(X) != msg.n_rows:
            raise PassiveError(
                f"party {self.name!r}: party {msg.sender!r} asks to route "
                f"{msg.n_rows} rows; it holds "
                f"{0 if X is None else len(X)} rows to predict"
            )
        if len(set(msg.records)) != len(msg.records):
            raise self._refuse(msg.sender, "a prediction request naming a record twice")
        maps = []
        for r in msg.records:
            if r not in self.records:
                raise PassiveError(
                    f"party {self.name!r}: party {msg.sender!r} asks for unknown record {r}"
                )
            f, thr = self.records[r]
            maps.append(to_bitmap(X[:, f] <= thr))
        self.trained = True  # no more training messages: routes would meet new records
        return PredictRoutes(
            run=self.run,
            sender=self.name,
            n_rows=msg.n_rows,
            records=msg.records,
            left=b"".join(maps),
        )
