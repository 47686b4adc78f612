"""Masked secure-hist vectors on the wire at the bit width each entry's federation sum needs.

Why this is exact
    Secure aggregation adds masks mod 2^64, and x -> x mod 2^b is a ring homomorphism from
    Z/2^64 to Z/2^b for every b <= 64. So a silo may mask its vector as usual and send only the
    low b bits of each masked entry: the service sums those mod 2^64, removes the masks mod
    2^64 as usual, and the result agrees with the plain federation sum mod 2^b. When that sum is
    known to lie in [0, 2^b) (counts, hessians) or in [-2^(b-1), 2^(b-1)) (gradients), reducing
    mod 2^b and sign-extending gives it back exactly. The low b bits of a uniformly masked
    entry are uniform mod 2^b, so the service learns nothing more than before; the high bits
    never leave the silo.

Bounds (both sides compute them from what both already know)
    With S the codec's fractional bits and B its grad_bound, every row contributes
    |q_g| <= ceil(B 2^S) to a gradient cell, 0 <= q_h <= ceil(min(h_max, B) 2^S) to a hessian
    cell (h_max = 1/4 for binary:logistic, 1/2 for multi:softprob, 1 for reg:squarederror) and
    1 to a count cell. A level names each requested node with its federation-wide rows n (the
    service read n off the parent's exact sum; every silo refuses a stated n below its own
    rows), so a node's cells need
        counts   bitlen(n)               unsigned
        hessians bitlen(n ceil(h_max 2^S)) unsigned
        gradients bitlen(n ceil(B 2^S)) + 1  two's complement
    bits. The setup vector's fine-grid counts are bounded by the federation's training rows:
    a packed run's first aggregation sums each silo's row count (one 64-bit entry), and the
    setup aggregation that follows sends its counts at bitlen of that sum (bitlen(max_rows)
    without it). The setup vector's own rows entry and the label statistics stay 64 bits wide,
    so the service's checks of them (at most max_rows, at most the first sum) cannot wrap.
    A silo refuses to send an entry outside its width (`HistVectorError`) instead of letting
    it wrap: its own sum of a cell is a partial sum of the same rows, so it obeys the same
    bound.

Frame
    ``b"FSHP"`` + 4-byte big-endian length + the `SessionMasked` message with an empty vector
    (header, shares, signature) + the masked entries' low bits, packed little-endian into
    64-bit words and cut to whole bytes. The signature covers the reduced (< 2^b) vector, which
    the service rebuilds exactly before checking it. `HistRunConfig.packed = False` keeps the
    64-bit format (plain `SessionMasked` bytes) for comparison.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence
from dataclasses import dataclass, replace
from functools import cached_property

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from schemas.secagg.session_messages import SessionMasked
from schemas.secure_hist.errors import HistVectorError, Where
from schemas.secure_hist.protocol import STATS, HistRunConfig

MAGIC = b"FSHP"
WORD = 64
H_MAX = {"binary:logistic": 0.25, "multi:softprob": 0.5, "reg:squarederror": 1.0}
_EMPTY = np.zeros(0, dtype="<u8")
_ONE = np.uint64(1)


@dataclass(frozen=True)
class Widths:
    """Per entry of a vector: its wire width in bits (1..64) and whether it is signed."""

    bits: np.ndarray  # uint64
    signed: np.ndarray  # bool

    @property
    def size(self) -> int:
        return int(self.bits.size)

    @property
    def packed_bytes(self) -> int:
        return (int(self.bits.sum()) + 7) // 8

    @cached_property
    def _masks(self) -> np.ndarray:
        short = np.minimum(self.bits, 63)
        return np.where(self.bits >= WORD, ~np.uint64(0), (_ONE << short) - _ONE)

    def masks(self) -> np.ndarray:
        """2^b - 1 per entry (all ones for b = 64)."""
        return self._masks

    @cached_property
    def bias(self) -> np.ndarray:
        """2^(b-1) for signed entries below 64 bits, else 0: x + bias is in [0, 2^b) exactly
        when x is in the entry's range."""
        top = _ONE << (np.maximum(self.bits, 1) - _ONE)
        return np.where(self.signed & (self.bits < WORD), top, np.uint64(0))


def full(size: int) -> Widths:
    """Every entry 64 bits: the legacy wire, and what `fit`/`widen` leave unchanged."""
    return Widths(np.full(size, WORD, dtype=np.uint64), np.ones(size, dtype=bool))


def _segments(parts: Sequence[tuple[int, int, bool]]) -> Widths:
    """Widths from runs of (entries, bits, signed)."""
    counts = [n for n, _, _ in parts]
    bits = np.repeat(np.array([min(b, WORD) for _, b, _ in parts], dtype=np.uint64), counts)
    signed = np.repeat(np.array([s for _, _, s in parts], dtype=bool), counts)
    return Widths(bits, signed)


def setup_widths(config: HistRunConfig, rows: int | None = None) -> Widths:
    """Fine-grid counts at bitlen(rows) unsigned, `rows` the federation's training rows that
    the run's first aggregation summed (bitlen(max_rows) when not known); rows and label
    statistics 64 bits."""
    if not config.packed:
        return full(config.setup_length())
    cells = config.n_features * (config.fine_cells + 1)
    bound = min(rows, config.max_rows) if rows else config.max_rows
    return _segments(
        [
            (cells, max(bound.bit_length(), 1), False),
            (1 + config.label_stats, WORD, True),
        ]
    )


def row_bounds(config: HistRunConfig) -> tuple[int, int]:
    """Per-row bounds (|q_g|, q_h) of the fixed-point gradients and hessians."""
    codec = config.codec
    h_max = min(H_MAX[config.objective], config.grad_bound)
    return math.ceil(config.grad_bound * codec.scale), math.ceil(h_max * codec.scale)


def level_widths(config: HistRunConfig, total: int, rows: Sequence[int]) -> Widths:
    """Widths of a level vector: per requested node (with `rows` federation-wide rows), its
    g, h and count segments of `total` slots each (see the module docstring)."""
    if not config.packed:
        return full(len(rows) * STATS * total)
    qg, qh = row_bounds(config)
    parts: list[tuple[int, int, bool]] = []
    for n in rows:
        n = max(int(n), 1)
        parts += [
            (total, (n * qg).bit_length() + 1, True),
            (total, max((n * qh).bit_length(), 1), False),
            (total, n.bit_length(), False),
        ]
    return _segments(parts) if parts else Widths(np.zeros(0, np.uint64), np.zeros(0, bool))


def fit(x: np.ndarray, widths: Widths, where: Where | None = None) -> np.ndarray:
    """`x` (``<u8`` two's complement of exact integers) reduced mod 2^b per entry.

    Raises HistVectorError, naming the first offending entry, if an entry lies outside its
    width's range instead of wrapping it silently.
    """
    where = where or {}
    if x.shape != (widths.size,):
        raise HistVectorError(
            f"vector of {x.size} entries for widths of {widths.size} entries", **where
        )
    u = np.ascontiguousarray(x, dtype="<u8")
    masks = widths.masks()
    bad = ((u + widths.bias) & ~masks) != 0  # mod 2^64: shifted into [0, 2^b) or not
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        b, value = int(widths.bits[i]), int(u.view(np.int64)[i])
        lo, hi = (-(2 ** (b - 1)), 2 ** (b - 1) - 1) if widths.signed[i] else (0, 2**b - 1)
        kind = "signed" if widths.signed[i] else "unsigned"
        raise HistVectorError(
            f"entry {i} = {value} does not fit its {b}-bit {kind} wire width [{lo}, {hi}] "
            f"({int(bad.sum())} entries out of bound): the federation's bound on this sum is "
            "broken, refusing rather than wrapping it",
            **where,
        )
    return u & masks


def widen(total: np.ndarray, widths: Widths) -> np.ndarray:
    """A sum mod 2^64 of reduced vectors, read back mod 2^b per entry and sign-extended:
    the ``<u8`` two's complement of the exact sum (as the 64-bit wire would have given)."""
    masks = widths.masks()
    r = np.ascontiguousarray(total, dtype="<u8") & masks
    top = _ONE << (np.minimum(widths.bits, 64) - _ONE)
    negative = widths.signed & (widths.bits < WORD) & ((r & top) != 0)
    return np.where(negative, r | ~masks, r).astype("<u8")


def pack(values: np.ndarray, widths: Widths) -> bytes:
    """Concatenate each entry's low `bits` bits, little-endian, cut to whole bytes."""
    v = np.ascontiguousarray(values, dtype="<u8") & widths.masks()
    ends = np.cumsum(widths.bits, dtype=np.uint64)
    offsets = ends - widths.bits
    total = int(ends[-1]) if ends.size else 0
    words = np.zeros(total // WORD + 2, dtype=np.uint64)
    w, s = (offsets >> np.uint64(6)).astype(np.int64), offsets & np.uint64(63)
    lo = v << s
    hi = (v >> _ONE) >> (np.uint64(63) - s)  # v >> (64 - s), and 0 for s = 0
    if v.size:
        starts = np.flatnonzero(np.diff(w, prepend=-1))  # entries sharing a word are adjacent
        words[w[starts]] |= np.bitwise_or.reduceat(lo, starts)
        words[w[starts] + 1] |= np.bitwise_or.reduceat(hi, starts)
    return words.astype("<u8").tobytes()[: (total + 7) // 8]


def unpack(raw: bytes | memoryview, widths: Widths, where: Where | None = None) -> np.ndarray:
    """Inverse of `pack`: the ``<u8`` entries (each < 2^bits)."""
    if len(raw) != widths.packed_bytes:
        raise HistVectorError(
            f"packed vector has {len(raw)} bytes; {widths.size} entries of "
            f"{int(widths.bits.sum())} bits in all need {widths.packed_bytes}",
            **(where or {}),
        )
    total = int(widths.bits.sum())
    buf = np.zeros((total // WORD + 2) * 8, dtype=np.uint8)
    buf[: len(raw)] = np.frombuffer(raw, dtype=np.uint8)
    words = buf.view("<u8")
    offsets = np.cumsum(widths.bits, dtype=np.uint64) - widths.bits
    w, s = (offsets >> np.uint64(6)).astype(np.int64), offsets & np.uint64(63)
    lo = words[w] >> s
    hi = np.where(s == 0, np.uint64(0), words[w + 1] << ((np.uint64(64) - s) & np.uint64(63)))
    return ((lo | hi) & widths.masks()).astype("<u8")


def seal_masked(msg: SessionMasked, widths: Widths, identity: Ed25519PrivateKey) -> bytes:
    """The silo's wire bytes of a masked message: 64-bit as is, else reduced, re-signed, packed.

    The masked entries are uniform mod 2^64, so no range check applies here (`fit` checked the
    plain vector); only their low bits go out.
    """
    if bool((widths.bits >= WORD).all()):
        return msg.to_bytes()
    reduced = np.ascontiguousarray(msg.vector, dtype="<u8") & widths.masks()
    signed = SessionMasked.create(
        identity,
        run_id=msg.run_id,
        round_num=msg.round_num,
        silo=msg.silo,
        b_commitment=msg.b_commitment,
        ciphertexts=msg.ciphertexts,
        vector=reduced,
    )
    head = replace(signed, vector=_EMPTY).to_bytes()
    return MAGIC + struct.pack(">I", len(head)) + head + pack(reduced, widths)


def masked_head(raw: bytes) -> SessionMasked:
    """A masked message's header (run, counter, silo, shares; a packed frame's vector left
    empty): enough to tell which aggregation it answers before its widths are known."""
    if raw[:4] != MAGIC:
        return SessionMasked.from_bytes(raw)
    if len(raw) < 8:
        raise HistVectorError("a packed secure-hist frame is cut short in its header length")
    (size,) = struct.unpack(">I", raw[4:8])
    return SessionMasked.from_bytes(raw[8 : 8 + size])


def open_masked(raw: bytes, widths: Widths, where: Where | None = None) -> SessionMasked:
    """The service's reading of `seal_masked` bytes (the signature is checked later, by the
    session, over the rebuilt vector). Raises HistVectorError on a malformed frame and the
    session's MessageFormatError on a malformed message."""
    if bool((widths.bits >= WORD).all()):
        return SessionMasked.from_bytes(raw)
    if raw[:4] != MAGIC or len(raw) < 8:
        raise HistVectorError(
            "expected a packed secure-hist vector (FSHP frame); this run packs masked "
            "vectors to their bit widths",
            **(where or {}),
        )
    (size,) = struct.unpack(">I", raw[4:8])
    head = SessionMasked.from_bytes(raw[8 : 8 + size])
    return replace(head, vector=unpack(memoryview(raw)[8 + size :], widths, where))
