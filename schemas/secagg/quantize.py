"""Fixed-point quantization of float vectors into integers mod 2^k, with headroom for a sum.

Representation
    A real x is clipped to [-c, c] and mapped to the integer q = SR(x * s), where s is the
    scale and SR is stochastic rounding: floor(v) + 1 with probability frac(v), else floor(v),
    so E[q] = x * s (unbiased up to the 2^-32 grid of the PRG uniforms). q is stored modulo 2^k
    in two's complement (k = 32 -> ``<u4``, k = 64 -> ``<u8``); masks and sums are computed
    with wrapping unsigned arithmetic, and the final sum is read back as a signed integer.

Headroom (why the sum of n clipped vectors cannot wrap)
    Let M = 2^(k-1) - 1 and L = min(floor(M / n), 2^52) be the integer level of the clip
    bound, s = L / c. Values are clipped so |x * s| <= L, and since L is an integer stochastic
    rounding cannot leave [-L, L]. Hence |sum of n quantized values| <= n * L <= M: it fits in
    a signed k-bit integer and reading the modular sum as two's complement is exact.
    The 2^52 cap keeps x * s exactly representable in float64 so that rounding is truly
    stochastic; k = 64 therefore buys resolution only up to that cap (and headroom for huge n).

Error bound
    Per coordinate and silo |q / s - clip(x)| < 1 / s = c / L, so the dequantized sum of n
    vectors is within n * c / L of the sum of the clipped inputs (and the mean within c / L).
    For k = 32, n = 10, c = 1: L = 214,748,364 and the mean is within 4.7e-9 per coordinate.

``n`` must be the number of vectors that are summed (the roster size, since survivors <= n).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from schemas.secagg.exceptions import InputError, SecAggConfigError
from schemas.secagg.prg import dtype_for, iter_expand

_FLOAT_EXACT = 2**52
_CHUNK = 1 << 16


@dataclass(frozen=True)
class Quantizer:
    """Quantization parameters agreed for a round.

    Parameters
    ----------
    clip
        c > 0: every coordinate is clipped to [-c, c] (an L2 clip of C implies c = C suffices).
    n_summands
        n: the most vectors that will be summed.
    bits
        k: 32 or 64.
    """

    clip: float
    n_summands: int
    bits: int = 32

    def __post_init__(self) -> None:
        dtype_for(self.bits)
        if not (np.isfinite(self.clip) and self.clip > 0):
            raise SecAggConfigError(f"clip bound must be a positive finite number, got {self.clip}")
        if not 1 <= self.n_summands <= self.max_level:
            raise SecAggConfigError(
                f"n_summands must be between 1 and {self.max_level} for k={self.bits}, "
                f"got {self.n_summands}"
            )

    @property
    def max_level(self) -> int:
        """M = 2^(k-1) - 1, the largest magnitude a signed k-bit integer holds."""
        return 2 ** (self.bits - 1) - 1

    @property
    def level(self) -> int:
        """L = min(floor(M / n), 2^52): the integer that the clip bound c maps to."""
        return min(self.max_level // self.n_summands, _FLOAT_EXACT)

    @property
    def scale(self) -> float:
        """s = L / c."""
        return self.level / self.clip

    @property
    def dtype(self) -> np.dtype:
        """Unsigned dtype holding integers mod 2^k."""
        return dtype_for(self.bits)

    def sum_error_bound(self, count: int) -> float:
        """Strict bound on |dequantized sum - sum of clipped inputs| per coordinate."""
        return count / self.scale

    def quantize(self, x: np.ndarray, seed: bytes | None = None) -> np.ndarray:
        """Clip, scale and stochastically round ``x`` into integers mod 2^k.

        Parameters
        ----------
        x
            1-D float vector.
        seed
            32-byte seed of the rounding randomness; fresh ``os.urandom(32)`` when omitted
            (pass one only to make tests reproducible).

        Returns
        -------
        numpy.ndarray
            Two's-complement integers of dtype :attr:`dtype`.
        """
        values = np.asarray(x)
        if values.ndim != 1:
            raise InputError(f"quantize expects a 1-D vector, got shape {values.shape}")
        if not np.isfinite(values).all():
            raise InputError("update contains NaN or infinite values; fix local training")
        out = np.empty(values.size, dtype=self.dtype)
        stream = iter_expand(seed if seed is not None else os.urandom(32), values.size, 32, _CHUNK)
        # chunks keep the float64 temporaries in cache (2-3x faster than whole passes at 1e7)
        for start, uniform in zip(range(0, values.size, _CHUNK), stream, strict=True):
            out[start : start + _CHUNK] = self._round(values[start : start + _CHUNK], uniform)
        return out

    def _round(self, values: np.ndarray, uniform: np.ndarray) -> np.ndarray:
        level = float(self.level)
        v = np.multiply(values, self.scale, dtype=np.float64)
        np.clip(v, -level, level, out=v)
        q = np.floor(v)
        np.subtract(v, q, out=v)  # fractional part in [0, 1)
        # round up iff a uniform 32-bit integer r satisfies r / 2^32 < frac, i.e.
        # r < frac * 2^32; both sides are exact in float64, so P(up) = frac on a 2^-32 grid
        np.multiply(v, 2.0**32, out=v)
        rounded = q.astype(np.int64)
        rounded += uniform < v
        return rounded.astype(self.dtype)  # int64 -> unsigned wraps: two's complement mod 2^k

    def dequantize_sum(self, total: np.ndarray) -> np.ndarray:
        """Map a sum of quantized vectors (mod 2^k) back to float64 values."""
        signed = np.ascontiguousarray(total, dtype=self.dtype).view(f"<i{self.bits // 8}")
        return signed.astype(np.float64) / self.scale
