"""t-of-n Shamir secret sharing of 32-byte secrets over the prime field GF(2^521 - 1).

A secret s (32 bytes read as a big-endian integer < 2^256 < p) is the constant term of a random
polynomial f of degree t - 1; the share for holder index x (1..n, never 0) is (x, f(x)). Any t
shares give s by Lagrange interpolation at 0; t - 1 shares are consistent with every possible
secret, so they reveal nothing. Interpolating fewer than t shares still returns *some* field
element, silently wrong: callers pass a commitment (:func:`commit`) so that a wrong
reconstruction is detected instead of used. Coefficients come from :mod:`secrets`.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache

from schemas.secagg.crypto import transcript
from schemas.secagg.exceptions import (
    InsufficientSharesError,
    MessageFormatError,
    ReconstructionError,
    SecAggConfigError,
)

PRIME = 2**521 - 1  # Mersenne prime: 2^256 secrets fit with a wide margin
SECRET_BYTES = 32
VALUE_BYTES = (PRIME.bit_length() + 7) // 8  # 66
SHARE_BYTES = 4 + VALUE_BYTES


@dataclass(frozen=True)
class Share:
    """One share: holder index (1..n) and the polynomial's value there."""

    index: int
    value: int

    def to_bytes(self) -> bytes:
        """Encode as 4-byte index followed by the 66-byte big-endian value."""
        return self.index.to_bytes(4, "big") + self.value.to_bytes(VALUE_BYTES, "big")

    @classmethod
    def from_bytes(cls, raw: bytes) -> Share:
        """Decode :meth:`to_bytes` output; rejects wrong lengths and out-of-field values."""
        if len(raw) != SHARE_BYTES:
            raise MessageFormatError(f"a share is {SHARE_BYTES} bytes, got {len(raw)}")
        index = int.from_bytes(raw[:4], "big")
        value = int.from_bytes(raw[4:], "big")
        if index == 0 or value >= PRIME:
            raise MessageFormatError("share index must be >= 1 and value < p")
        return cls(index, value)


def split(secret: bytes, threshold: int, indices: Sequence[int]) -> dict[int, Share]:
    """Split ``secret`` into shares for ``indices`` such that any ``threshold`` reconstruct it.

    Parameters
    ----------
    secret
        Exactly 32 bytes.
    threshold
        t, with 1 <= t <= len(indices).
    indices
        Distinct holder indices >= 1 (the holders' positions in the round's roster).

    Returns
    -------
    dict[int, Share]
        Share per holder index.
    """
    if len(secret) != SECRET_BYTES:
        raise SecAggConfigError(f"Shamir secrets are {SECRET_BYTES} bytes, got {len(secret)}")
    if len(set(indices)) != len(indices) or min(indices, default=1) < 1:
        raise SecAggConfigError(f"share indices must be distinct and >= 1, got {list(indices)}")
    if not 1 <= threshold <= len(indices):
        raise SecAggConfigError(
            f"threshold must be between 1 and the number of holders ({len(indices)}), "
            f"got {threshold}"
        )
    coeffs = [int.from_bytes(secret, "big")]
    coeffs += [secrets.randbelow(PRIME) for _ in range(threshold - 1)]
    return {x: Share(x, _evaluate(coeffs, x)) for x in indices}


def _evaluate(coeffs: Sequence[int], x: int) -> int:
    acc = 0
    for c in reversed(coeffs):  # Horner
        acc = (acc * x + c) % PRIME
    return acc


@lru_cache(maxsize=4096)
def lagrange_at_zero(indices: tuple[int, ...]) -> tuple[int, ...]:
    """Lagrange coefficients l_i(0) for the given distinct indices (cached: the server reuses
    the same survivor set for every secret of a round)."""
    coeffs = []
    for i in indices:
        num, den = 1, 1
        for j in indices:
            if j != i:
                num = num * j % PRIME
                den = den * (j - i) % PRIME
        coeffs.append(num * pow(den, -1, PRIME) % PRIME)
    return tuple(coeffs)


def interpolate_at_zero(shares: Iterable[Share]) -> int:
    """f(0) of the lowest-degree polynomial through ``shares``; no threshold check at all.

    With fewer than t shares of a degree t - 1 polynomial the result is a wrong value; use
    :func:`reconstruct` unless you are demonstrating exactly that.
    """
    ordered = sorted(shares, key=lambda s: s.index)
    indices = tuple(s.index for s in ordered)
    if len(set(indices)) != len(indices):
        raise ReconstructionError(f"duplicate share indices {list(indices)}")
    coeffs = lagrange_at_zero(indices)
    return sum(c * s.value for c, s in zip(coeffs, ordered, strict=True)) % PRIME


def commit(secret: bytes, *context: bytes | str | int) -> bytes:
    """SHA-256 commitment to ``secret`` bound to ``context`` (e.g. run, round, silo).

    Publishing it is safe for 256-bit random secrets: it only lets a reconstruction be checked.
    """
    return hashlib.sha256(transcript("shamir-commit", *context, secret)).digest()


def reconstruct(
    shares: Iterable[Share],
    threshold: int,
    commitment: bytes | None = None,
    context: Sequence[bytes | str | int] = (),
) -> bytes:
    """Reconstruct a 32-byte secret from at least ``threshold`` shares.

    Uses the ``threshold`` lowest-indexed shares; the commitment check catches bad shares.

    Raises
    ------
    InsufficientSharesError
        With fewer than ``threshold`` distinct shares.
    ReconstructionError
        If the result is not a 32-byte value or does not match ``commitment``.
    """
    distinct = {s.index: s for s in shares}
    if len(distinct) < threshold:
        raise InsufficientSharesError(
            "too few Shamir shares to reconstruct the secret", needed=threshold, got=len(distinct)
        )
    chosen = [distinct[i] for i in sorted(distinct)[:threshold]]
    value = interpolate_at_zero(chosen)
    if value >= 1 << (8 * SECRET_BYTES):
        raise ReconstructionError("shares interpolate to a value that is not a 32-byte secret")
    secret = value.to_bytes(SECRET_BYTES, "big")
    if commitment is not None and commit(secret, *context) != commitment:
        raise ReconstructionError(
            "reconstructed secret does not match its commitment: some shares are wrong"
        )
    return secret
