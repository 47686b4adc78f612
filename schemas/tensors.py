"""Binary tensor payloads: safetensors with a fedsilo header, never pickle.

A payload is an ordered set of named float arrays plus string metadata. The safetensors
container stores raw little-endian bytes with dtype and shape, so decoding cannot execute
code; `decode_expected` then checks names, shapes and dtype against what the receiver
expects and names every mismatch.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence

import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load as st_load
from safetensors.numpy import save as st_save

from schemas import WIRE_VERSION
from schemas.exceptions import TensorFormatError

FORMAT = "fedsilo-tensors"
ORDER_KEY = "fedsilo.order"
FORMAT_KEY = "fedsilo.format"
WIRE_KEY = "fedsilo.wire"
RESERVED = (FORMAT_KEY, WIRE_KEY, ORDER_KEY)


def encode(arrays: Mapping[str, np.ndarray], metadata: Mapping[str, str] | None = None) -> bytes:
    """Serialize named arrays (order kept) and string metadata into one payload."""
    meta = {FORMAT_KEY: FORMAT, WIRE_KEY: WIRE_VERSION, ORDER_KEY: json.dumps(list(arrays))}
    for key, value in (metadata or {}).items():
        if key in meta:
            raise ValueError(f"metadata key {key!r} is reserved")
        meta[key] = str(value)
    contiguous = {name: np.ascontiguousarray(a) for name, a in arrays.items()}
    return bytes(st_save(contiguous, metadata=meta))


def read_metadata(payload: bytes) -> dict[str, str]:
    """Return the payload's string metadata without decoding the arrays."""
    if len(payload) < 8:
        raise TensorFormatError(f"payload of {len(payload)} bytes is too short for a header")
    header_len = int.from_bytes(payload[:8], "little")
    if header_len <= 0 or 8 + header_len > len(payload):
        raise TensorFormatError(f"payload header length {header_len} is out of bounds")
    try:
        header = json.loads(payload[8 : 8 + header_len])
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise TensorFormatError(f"payload header is not JSON: {exc}") from exc
    except RecursionError as exc:  # a header nested deeper than any real one
        raise TensorFormatError("payload header is nested too deeply to be a header") from exc
    if not isinstance(header, dict):
        raise TensorFormatError("payload header is not a JSON object")
    meta = header.get("__metadata__") or {}
    if not isinstance(meta, dict):
        raise TensorFormatError("payload metadata is not a JSON object")
    if meta.get(FORMAT_KEY) != FORMAT:
        raise TensorFormatError(f"not a {FORMAT} payload (format={meta.get(FORMAT_KEY)!r})")
    if meta.get(WIRE_KEY) != WIRE_VERSION:
        raise TensorFormatError(
            f"payload wire version {meta.get(WIRE_KEY)!r}, this fedsilo speaks {WIRE_VERSION!r}"
        )
    return dict(meta)


def decode(payload: bytes) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Decode a payload into ordered arrays and metadata (no expectation checks)."""
    meta = read_metadata(payload)
    try:
        loaded = st_load(payload)
    except (SafetensorError, ValueError) as exc:
        raise TensorFormatError(f"payload does not decode as safetensors: {exc}") from exc
    try:
        order = json.loads(meta[ORDER_KEY])
    except (KeyError, json.JSONDecodeError, RecursionError) as exc:
        raise TensorFormatError("payload lacks its array order") from exc
    if not isinstance(order, list) or not all(isinstance(n, str) for n in order):
        raise TensorFormatError("payload's array order is not a list of names")
    if sorted(order) != sorted(loaded):
        raise TensorFormatError("payload array order does not match its arrays")
    user_meta = {k: v for k, v in meta.items() if k not in RESERVED}
    return {name: loaded[name] for name in order}, user_meta


def decode_expected(
    payload: bytes,
    expected: Sequence[tuple[str, tuple[int, ...]]],
    dtype: np.dtype | type = np.float32,
) -> tuple[list[np.ndarray], dict[str, str]]:
    """Decode and check names, shapes, dtype and finiteness against `expected`.

    Raises
    ------
    TensorFormatError
        naming the expected and the received layout, or the first non-finite array.
    """
    arrays, meta = decode(payload)
    want = [(n, tuple(s)) for n, s in expected]
    got = [(n, tuple(a.shape)) for n, a in arrays.items()]
    if len(got) != len(want):
        raise TensorFormatError(
            f"expected {len(want)} arrays {_layout(want)}, received {len(got)} {_layout(got)}"
        )
    if got != want:
        raise TensorFormatError(f"expected arrays {_layout(want)}, received {_layout(got)}")
    want_dtype = np.dtype(dtype)
    for name, arr in arrays.items():
        if arr.dtype != want_dtype:
            raise TensorFormatError(
                f"array {name!r}: expected dtype {want_dtype}, received {arr.dtype}"
            )
        if not np.isfinite(arr).all():
            bad = int((~np.isfinite(arr)).sum())
            raise TensorFormatError(f"array {name!r} holds {bad} NaN or infinite values")
    return list(arrays.values()), meta


def digest(payload: bytes) -> str:
    """sha256 hex digest of a payload, as recorded in lineage and compared on resubmission."""
    return hashlib.sha256(payload).hexdigest()


def _layout(items: Sequence[tuple[str, tuple[int, ...]]]) -> str:
    return "[" + ", ".join(f"{n}{list(s)}" for n, s in items) + "]"
