"""Gaussian noise for differential privacy from a cryptographic keystream.

numpy's generators (PCG64, MT19937) are statistically good but predictable: whoever learns
their state (a few outputs suffice for some) can subtract the noise. Here every draw comes
from ChaCha20 keyed with 32 fresh bytes from the OS (`os.urandom`) per call:

1. the keystream is read as little-endian 64-bit words; the top 53 bits of each give a
   uniform on the grid {k / 2^53}, the full precision of a float64 mantissa;
2. Box–Muller turns each pair (u1, u2) into two independent N(0, 1) draws:
   ``sqrt(-2 ln(1 - u1)) * (cos, sin)(2 pi u2)`` (``1 - u1`` lies in (0, 1], so the
   logarithm is finite);
3. the draws are scaled by the standard deviation.

numpy serves only as array arithmetic; no numpy random generator is involved. Floating-point
side channels of the sampling itself (Mironov 2012) are out of scope, as in most DP-FL systems.
"""

from __future__ import annotations

import math
import os

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms

KEY_BYTES = 32
_NONCE = bytes(16)  # ChaCha20's 128-bit counter || nonce; every call has a fresh key
_CHUNK = 1 << 20  # uniforms per keystream block read (8 MiB), to bound memory per step


def uniforms(size: int, key: bytes | None = None) -> np.ndarray:
    """`size` uniforms on [0, 1) with 53-bit precision from ChaCha20 under `key`.

    Parameters
    ----------
    size
        How many.
    key
        32 bytes; default: fresh from `os.urandom`. A fixed key is for tests only.
    """
    key = os.urandom(KEY_BYTES) if key is None else key
    encryptor = Cipher(algorithms.ChaCha20(key, _NONCE), mode=None).encryptor()
    out = np.empty(size, dtype=np.float64)
    for start in range(0, size, _CHUNK):
        n = min(_CHUNK, size - start)
        words = np.frombuffer(encryptor.update(bytes(8 * n)), dtype="<u8")
        out[start : start + n] = (words >> np.uint64(11)).astype(np.float64) * 2.0**-53
    return out


def gaussian(std: float, size: int, key: bytes | None = None) -> np.ndarray:
    """`size` independent N(0, std^2) draws (Box–Muller over `uniforms`).

    Raises
    ------
    ValueError
        If `std` is negative or not finite, or `size` is negative.
    """
    if not math.isfinite(std) or std < 0:
        raise ValueError(f"the noise's standard deviation must be finite and >= 0, not {std}")
    if size < 0:
        raise ValueError(f"cannot draw {size} noise values")
    pairs = (size + 1) // 2
    u = uniforms(2 * pairs, key)
    radius = np.sqrt(-2.0 * np.log1p(-u[:pairs]))
    angle = 2.0 * math.pi * u[pairs:]
    normals = np.concatenate([radius * np.cos(angle), radius * np.sin(angle)])
    return std * normals[:size]
