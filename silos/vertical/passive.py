"""The passive party of vertical SecureBoost: features, no labels.

It bins its own columns (quantile bins), receives one Paillier ciphertext per row from the
active party and, per requested node, multiplies them into encrypted bin sums (an addition
under Paillier) for every feature, packed 13 bins to a ciphertext. It never sees a
gradient in the clear: it holds no private key. When one of its features wins a split it
keeps the threshold in its lookup table under a fresh record id and returns only the
rows that go left; at prediction it routes rows through its own records.
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
from silos.vertical.trees import bin_columns, quantile_cuts


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


# fork-shared state of a histogram request: (public key, ciphertexts, bin columns, n_bins)
_STATE: tuple[he.PublicKey, list, list[list[int]], list[int]] | None = None


def _hist_task(task: tuple[list[int], list[int]]) -> list[int]:
    assert _STATE is not None
    pub, cts, cols, n_bins = _STATE
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
    return out


@dataclass
class PassiveParty:
    name: str
    run: str
    X: np.ndarray  # aligned rows x this party's features
    n_bins: int = 32
    workers: int = field(default_factory=lambda: min(2, os.cpu_count() or 1))
    cuts: list[np.ndarray] = field(default_factory=list)
    records: dict[int, tuple[int, float]] = field(default_factory=dict)  # record -> (f, thr)
    _pub: he.PublicKey | None = field(default=None, repr=False)
    _cts: list = field(default_factory=list, repr=False)
    _tree: int = -1
    _predict_X: np.ndarray | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if len(self.X) > he.MAX_ROWS:
            raise PassiveError(f"party {self.name!r}: {len(self.X)} rows, at most {he.MAX_ROWS}")
        self.cuts = [quantile_cuts(self.X[:, f], self.n_bins) for f in range(self.X.shape[1])]
        self.bins = bin_columns(self.X, self.cuts)
        self._cols = [self.bins[:, f].tolist() for f in range(self.X.shape[1])]
        self._nb = [len(c) + 1 for c in self.cuts]

    @property
    def n_rows(self) -> int:
        return len(self.X)

    def handle(self, msg: VerticalMessage) -> VerticalMessage:
        if isinstance(msg, HeKey):
            self._pub = he.peer_public_key(msg.n, msg.hs, self.name, msg.sender, he.KEY_BITS)
            return self._ack()
        pub = self._need_key(msg.sender)
        if isinstance(msg, EncryptedGradients):
            if msg.n_rows != self.n_rows:
                raise PassiveError(
                    f"party {self.name!r}: party {msg.sender!r} sent gradients "
                    f"for {msg.n_rows} rows in tree {msg.tree}; it holds "
                    f"{self.n_rows} aligned rows"
                )
            what = f"gradients of tree {msg.tree}"
            self._cts = [
                gmpy2.mpz(c) for c in he.from_bytes(pub, msg.ciphertexts, msg.sender, what)
            ]
            self._tree = msg.tree
            return self._ack()
        if isinstance(msg, HistogramRequest):
            return self._histograms(msg)
        if isinstance(msg, SplitDecision):
            return self._split(msg)
        if isinstance(msg, PredictRequest):
            return self._routes(msg)
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

    def _histograms(self, msg: HistogramRequest) -> HistogramBatch:
        global _STATE
        pub = self._need_key(msg.sender)
        if msg.tree != self._tree:
            raise PassiveError(
                f"party {self.name!r}: histogram request for tree {msg.tree} "
                f"from party {msg.sender!r}, gradients held for {self._tree}"
            )
        feats = list(range(self.X.shape[1]))
        tasks = []
        for node in msg.nodes:
            rows = np.flatnonzero(
                from_bitmap(
                    node.rows, self.n_rows, msg.sender, f"node {node.node} of tree {msg.tree}"
                )
            ).tolist()
            step = 2 * -(-len(feats) // (self.workers * 4))  # even: features pair up
            tasks.append([(rows, feats[i : i + step]) for i in range(0, len(feats), step)])
        _STATE = (pub, self._cts, self._cols, self._nb)
        flat = [t for group in tasks for t in group]
        if self.workers > 1 and len(flat) > 1 and len(self._cts) >= 2000:
            with ProcessPoolExecutor(self.workers, get_context("fork")) as pool:
                parts = list(pool.map(_hist_task, flat))
        else:
            parts = [_hist_task(t) for t in flat]
        _STATE = None
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
        where = f"split of node {msg.node} in tree {msg.tree}"
        if msg.feature >= len(self.cuts) or msg.bin >= self._nb[msg.feature] - 1:
            raise PassiveError(
                f"party {self.name!r} refused the {where} from party "
                f"{msg.sender!r}: feature {msg.feature} bin {msg.bin} does not "
                "exist"
            )
        rows = from_bitmap(msg.rows, self.n_rows, msg.sender, where)
        record = len(self.records)
        self.records[record] = (msg.feature, float(self.cuts[msg.feature][msg.bin]))
        left = rows & (self.bins[:, msg.feature] <= msg.bin)
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
        X = self._predict_X
        if X is None or len(X) != msg.n_rows:
            raise PassiveError(
                f"party {self.name!r}: party {msg.sender!r} asks to route "
                f"{msg.n_rows} rows; it holds "
                f"{0 if X is None else len(X)} rows to predict"
            )
        maps = []
        for r in msg.records:
            if r not in self.records:
                raise PassiveError(
                    f"party {self.name!r}: party {msg.sender!r} asks for unknown record {r}"
                )
            f, thr = self.records[r]
            maps.append(to_bitmap(X[:, f] <= thr))
        return PredictRoutes(
            run=self.run,
            sender=self.name,
            n_rows=msg.n_rows,
            records=msg.records,
            left=b"".join(maps),
        )
