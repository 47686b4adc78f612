"""Messages of a secure-aggregation session (many aggregations over one key exchange).

Same wire format and signing as :mod:`schemas.secagg.messages` (``FSA1`` + JSON header +
raw vector; Ed25519 over (run, round, stage, silo, body)). ``round_num`` carries the
aggregation counter (0 for the session's key advert), and every stage name starts with
``session-`` so that no session message can be replayed as a per-round protocol message.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from schemas.secagg import crypto
from schemas.secagg.messages import Message, Signed, _items

SETUP_COUNTER = 0


@dataclass(frozen=True)
class SessionAdvert(Signed):
    """Setup: a silo's two fresh X25519 public keys for the whole session (c: shares, s: masks)."""

    stage: ClassVar[str] = "session-advertise"
    c_pk: bytes
    s_pk: bytes

    def body(self) -> bytes:
        return crypto.transcript(self.c_pk, self.s_pk)


@dataclass(frozen=True)
class AggregationRequest(Message):
    """Service -> every active silo: open aggregation `round_num` over `active`, length `dim`."""

    stage: ClassVar[str] = "session-open"
    active: tuple[str, ...]
    dim: int


@dataclass(frozen=True)
class SessionMasked(Signed):
    """One aggregation: the masked vector, plus Shamir shares of this aggregation's fresh
    self-mask seed, each AES-GCM-encrypted to one peer, and a commitment to the seed."""

    stage: ClassVar[str] = "session-masked"
    b_commitment: bytes
    ciphertexts: dict[str, bytes]
    vector: np.ndarray

    def body(self) -> bytes:
        v = np.ascontiguousarray(self.vector)
        digest = hashlib.sha256(v.data).digest()
        return crypto.transcript(
            v.dtype.str, v.size, digest, self.b_commitment, *_items(self.ciphertexts)
        )

    def __eq__(self, other: object) -> bool:
        return isinstance(other, SessionMasked) and self.to_bytes() == other.to_bytes()

    __hash__ = None  # type: ignore[assignment]


@dataclass(frozen=True)
class SessionConsistency(Signed):
    """A survivor's signature on the survivor list of one aggregation."""

    stage: ClassVar[str] = "session-consistency"
    survivors: tuple[str, ...]

    def body(self) -> bytes:
        return crypto.transcript(*sorted(self.survivors))


@dataclass(frozen=True)
class SessionUnmaskRequest(Message):
    """Service -> survivor `silo`: survivors, dropped silos, the consistency signatures and
    the encrypted self-mask shares addressed to this silo (sender -> ciphertext)."""

    stage: ClassVar[str] = "session-unmask"
    survivors: tuple[str, ...]
    dropped: tuple[str, ...]
    consistency: dict[str, bytes]
    ciphertexts: dict[str, bytes]


@dataclass(frozen=True)
class SessionUnmaskResponse(Signed):
    """Shares of survivors' self-mask seeds, and this silo's pairwise seeds with each dropped
    silo for this aggregation only (HKDF of the session seed and the counter)."""

    stage: ClassVar[str] = "session-unmask"
    b_shares: dict[str, bytes]
    pair_seeds: dict[str, bytes]

    def body(self) -> bytes:
        return crypto.transcript("b", *_items(self.b_shares), "p", *_items(self.pair_seeds))
