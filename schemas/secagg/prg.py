"""Cryptographic pseudo-random generator: a 32-byte seed expands into integers mod 2^k.

AES-256 in CTR mode (key = seed, counter starting at 0) encrypts zeros; the keystream is read
as little-endian unsigned integers of k = 32 or 64 bits, so every platform expands a seed to the
same vector. Each seed is derived for exactly one purpose (HKDF labels in :mod:`crypto`, or
fresh from ``os.urandom``), so the fixed starting counter never repeats a keystream across uses.
numpy's random generators are deliberately not used anywhere in this package: they are not
cryptographic and their seeds are short.

Masks are added chunk by chunk into the accumulator so that a 10^7-element vector never needs a
second 10^7-element buffer, and the chunk stays in cache between AES and the addition.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from schemas.secagg.exceptions import SecAggConfigError

SEED_BYTES = 32
_COUNTER0 = bytes(16)
_CHUNK = 1 << 18  # bytes per AES call: 256 KiB stays in L2 while it is added
_ZEROS = memoryview(bytes(_CHUNK))  # slicing a memoryview does not copy
DTYPES: dict[int, np.dtype] = {32: np.dtype("<u4"), 64: np.dtype("<u8")}


def dtype_for(bits: int) -> np.dtype:
    """numpy dtype of integers mod 2^bits (bits is 32 or 64)."""
    try:
        return DTYPES[bits]
    except KeyError:
        raise SecAggConfigError(f"modulus bits must be 32 or 64, got {bits}") from None


def _keystream(seed: bytes):  # noqa: ANN202 - cryptography's CipherContext type
    if len(seed) != SEED_BYTES:
        raise SecAggConfigError(f"PRG seeds are {SEED_BYTES} bytes, got {len(seed)}")
    return Cipher(algorithms.AES(seed), modes.CTR(_COUNTER0)).encryptor()


def expand(seed: bytes, length: int, bits: int) -> np.ndarray:
    """Expand ``seed`` into ``length`` uniform integers mod 2^bits.

    Parameters
    ----------
    seed
        32 bytes.
    length
        Number of integers d.
    bits
        32 or 64.

    Returns
    -------
    numpy.ndarray
        Array of dtype ``<u4`` or ``<u8`` and shape (length,).
    """
    dtype = dtype_for(bits)
    nbytes = length * dtype.itemsize
    out = np.empty(nbytes + 16, dtype=np.uint8)  # update_into wants block_size - 1 spare bytes
    view = out.data  # writable memoryview of the buffer
    enc = _keystream(seed)
    for start in range(0, nbytes, _CHUNK):
        n = min(_CHUNK, nbytes - start)
        enc.update_into(_ZEROS[:n] if n < _CHUNK else _ZEROS, view[start : start + n + 15])
    return out[:nbytes].view(dtype)


def iter_expand(seed: bytes, length: int, bits: int, chunk: int = 1 << 16) -> Iterator[np.ndarray]:
    """Yield :func:`expand` ``(seed, length, bits)`` in consecutive pieces of ``chunk`` integers.

    Each piece is a view of a reused buffer: consume it before asking for the next one.
    """
    dtype = dtype_for(bits)
    scratch = np.empty(chunk * dtype.itemsize + 16, dtype=np.uint8)
    view = scratch.data  # writable memoryview of the buffer
    enc = _keystream(seed)
    for start in range(0, length, chunk):
        nbytes = min(chunk, length - start) * dtype.itemsize
        zeros = _ZEROS[:nbytes] if nbytes <= _CHUNK else bytes(nbytes)
        enc.update_into(zeros, view[: nbytes + 15])
        yield scratch[:nbytes].view(dtype)


def add_mask(acc: np.ndarray, seed: bytes, sign: int = 1) -> None:
    """In place: ``acc += sign * PRG(seed)`` modulo 2^k (k from ``acc``'s dtype).

    Parameters
    ----------
    acc
        Contiguous ``<u4``/``<u8`` vector; unsigned arithmetic wraps, which is exactly mod 2^k.
    seed
        32-byte PRG seed.
    sign
        +1 to add the mask, -1 to subtract it.
    """
    if sign not in (1, -1):
        raise ValueError(f"sign must be +1 or -1, got {sign}")
    if not acc.flags.c_contiguous or acc.dtype not in DTYPES.values():
        raise SecAggConfigError(f"mask accumulator must be contiguous <u4/<u8, got {acc.dtype}")
    raw = acc.view(np.uint8)
    scratch = np.empty(_CHUNK + 16, dtype=np.uint8)
    view = scratch.data  # writable memoryview of the buffer
    enc = _keystream(seed)
    op = np.add if sign == 1 else np.subtract
    item = acc.dtype.itemsize
    for start in range(0, raw.size, _CHUNK):
        n = min(_CHUNK, raw.size - start)
        enc.update_into(_ZEROS[:n] if n < _CHUNK else _ZEROS, view[: n + 15])
        part = acc[start // item : (start + n) // item]
        op(part, scratch[:n].view(acc.dtype), out=part)
