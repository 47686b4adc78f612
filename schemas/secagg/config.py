"""Public parameters of one secure-aggregation round and its neighbour graph.

The roster (sorted silo ids) fixes each silo's Shamir index (position + 1) and the order that
decides the sign of pairwise masks. By default every silo is every other silo's neighbour
(Bonawitz et al. 2017). With ``degree`` set, the graph is a random Harary graph (SecAgg+,
Bell et al. 2020): silos are placed on a ring in a pseudo-random order and each is linked to
``degree / 2`` silos on either side. The order is derived with HKDF from (run, round), so every
party computes the same graph without extra messages. ``threshold`` then applies to each
neighbourhood (the silo and its ``degree`` neighbours) instead of to the whole roster.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from schemas.secagg import crypto
from schemas.secagg.crypto import PROTOCOL_LABEL, transcript
from schemas.secagg.exceptions import SecAggConfigError, UnknownSiloError, Where
from schemas.secagg.prg import dtype_for, expand

STAGES = ("advertise", "share", "masked", "consistency", "unmask")


def graph_seed(run_id: str, round_num: int) -> bytes:
    """Public 32-byte seed of the round's neighbour graph: HKDF-SHA256 of the round id."""
    kdf = HKDF(
        algorithm=hashes.SHA256(),
        length=32,
        salt=hashlib.sha256(PROTOCOL_LABEL).digest(),
        info=PROTOCOL_LABEL + b"/graph",
    )
    return kdf.derive(transcript("graph", run_id, round_num))


def default_degree(n: int) -> int:
    """An even SecAgg+ degree of about 3 log2 n (Bell et al.: O(log n) suffices), capped at n-1."""
    k = 2 * math.ceil(1.5 * math.log2(max(n, 2)))
    return min(k, n - 1)


def harary_neighbours(silos: tuple[str, ...], degree: int, seed: bytes) -> dict[str, frozenset]:
    """Neighbour sets of a random Harary graph over ``silos`` (degree even, < n - 1).

    Parameters
    ----------
    silos
        Roster.
    degree
        Even number of neighbours per silo.
    seed
        32-byte public seed (:func:`graph_seed`).
    """
    n = len(silos)
    keys = expand(seed, n, 64)
    order = [silos[i] for i in np.lexsort((np.arange(n), keys))]  # index breaks 2^-64 ties
    half = degree // 2
    out: dict[str, frozenset] = {}
    for pos, silo in enumerate(order):
        out[silo] = frozenset(order[(pos + off) % n] for off in range(-half, half + 1) if off)
    return out


@dataclass(frozen=True)
class RoundConfig:
    """Everything the parties of one round must agree on before it starts.

    Parameters
    ----------
    run_id, round_num
        Bind every key, share and signature to this round.
    silos
        Roster of silo ids (stored sorted).
    threshold
        t: shares needed to reconstruct a secret; survivors needed (per neighbourhood).
    dim
        d: length of the quantized vectors.
    bits
        k: the modulus is 2^k (32 or 64).
    degree
        None for the complete graph; an even number < n - 1 for a SecAgg+ graph.
    consistency_check
        Run Bonawitz's consistency round (survivors sign the survivor list before unmasking).
    """

    run_id: str
    round_num: int
    silos: tuple[str, ...]
    threshold: int
    dim: int
    bits: int = 32
    degree: int | None = None
    consistency_check: bool = True
    _index: dict[str, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "silos", tuple(sorted(self.silos)))
        object.__setattr__(self, "_index", {s: i + 1 for i, s in enumerate(self.silos)})
        dtype_for(self.bits)
        n = len(self.silos)
        where: Where = {"run_id": self.run_id, "round_num": self.round_num, "stage": "setup"}
        if len(self._index) != n or n < 2:
            raise SecAggConfigError(f"roster needs >= 2 distinct silos, got {self.silos}", **where)
        if self.dim < 1:
            raise SecAggConfigError(f"dim must be >= 1, got {self.dim}", **where)
        if self.degree is not None and (self.degree % 2 or not 2 <= self.degree < n - 1):
            raise SecAggConfigError(
                f"SecAgg+ degree must be even, >= 2 and < n - 1 = {n - 1}, got {self.degree}; "
                "use degree=None for the complete graph",
                **where,
            )
        size = n if self.degree is None else self.degree + 1
        if not 2 <= self.threshold <= size:
            raise SecAggConfigError(
                f"threshold must be between 2 and the neighbourhood size {size}, "
                f"got {self.threshold}",
                **where,
            )

    def index(self, silo: str) -> int:
        """Shamir index (1..n) of ``silo``; raises UnknownSiloError if it is not on the roster."""
        try:
            return self._index[silo]
        except KeyError:
            raise UnknownSiloError(
                f"{silo!r} is not on this round's roster {list(self.silos)}",
                run_id=self.run_id,
                round_num=self.round_num,
                silo=silo,
            ) from None

    @cached_property
    def neighbours(self) -> dict[str, frozenset]:
        """Each silo's neighbours (excluding itself)."""
        if self.degree is None:
            everyone = frozenset(self.silos)
            return {s: everyone - {s} for s in self.silos}
        return harary_neighbours(self.silos, self.degree, graph_seed(self.run_id, self.round_num))

    def to_dict(self) -> dict:
        """JSON-ready dict of the parameters."""
        return {
            "run_id": self.run_id,
            "round_num": self.round_num,
            "silos": list(self.silos),
            "threshold": self.threshold,
            "dim": self.dim,
            "bits": self.bits,
            "degree": self.degree,
            "consistency_check": self.consistency_check,
        }

    @classmethod
    def from_dict(cls, data: dict) -> RoundConfig:
        """Inverse of :meth:`to_dict`."""
        return cls(**{**data, "silos": tuple(data["silos"])})


def pair_seed(
    private: X25519PrivateKey, peer_public: bytes, cfg: RoundConfig, a: str, b: str
) -> bytes:
    """Pairwise mask seed s_ab from one side's s-key and the other's public s-key."""
    shared = crypto.agree(private, peer_public)
    return crypto.derive_mask_seed(shared, run_id=cfg.run_id, round_num=cfg.round_num, a=a, b=b)
