"""Canonical JSON for the lineage ledger: one exact text for every JSON value.

Version 1:

* objects with string keys sorted by code point; no whitespace (separators ``,`` and ``:``);
* UTF-8 text, non-ASCII characters written as themselves (``\\uXXXX`` only for the control
  characters JSON requires escaping, along with ``"`` and ``\\``);
* integers in decimal; floats as Python's ``repr``, the shortest text that reads back to the
  same IEEE double (``0.1``, ``1e-07``, ``1.0``); a whole float keeps its ``.0``, so ``1`` and
  ``1.0`` stay distinct; ``true``/``false``/``null``;
* refused: NaN and the infinities (no JSON form), non-string keys (``{1: x}`` and ``{"1": x}``
  would collide), duplicate keys, lone surrogates, any other Python type.

A verifier written in another language must reproduce Python's float repr, and integers
beyond 2**53 lose precision in languages that read JSON numbers as doubles.
"""

from __future__ import annotations

import json
import math
from typing import Any

from schemas.exceptions import SchemaError


class CanonicalJsonError(SchemaError):
    """A value has no canonical JSON form (NaN, a non-string key, an unknown type...)."""


def _check_value(value: Any, path: str) -> None:
    """Walk a value and refuse anything canonical JSON cannot represent exactly once."""
    if value is None or isinstance(value, bool | int):
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise CanonicalJsonError(
                f"{path} is {value!r}: NaN and infinities have no JSON form; record null "
                "or a string such as 'nan' instead"
            )
        return
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise CanonicalJsonError(f"{path} holds a lone surrogate; it is not UTF-8") from exc
        return
    if isinstance(value, list | tuple):
        for i, item in enumerate(value):
            _check_value(item, f"{path}[{i}]")
        return
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise CanonicalJsonError(
                    f"{path} has key {key!r} of type {type(key).__name__}; JSON keys must be "
                    "strings: convert it with str() before recording"
                )
            _check_value(key, f"{path} key")
            _check_value(item, f"{path}.{key}")
        return
    raise CanonicalJsonError(
        f"{path} is a {type(value).__name__}; convert it to str, int, float, bool, None, list "
        "or dict before recording"
    )


def canonical_json(value: Any, *, path: str = "payload") -> str:
    """Serialise `value` as canonical JSON (see the module docstring).

    Parameters
    ----------
    value
        JSON-representable data: dict with str keys, list/tuple, str, int, finite float,
        bool, None.
    path
        Name used in error messages to point at the offending field.

    Returns
    -------
    str
        The canonical text; ``canonical_json(json.loads(t)) == t`` for its output ``t``.

    Raises
    ------
    CanonicalJsonError
        If the value holds NaN/infinity, a non-string key, a lone surrogate or another type.
    """
    _check_value(value, path)
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    keys = [k for k, _ in pairs]
    if len(set(keys)) != len(keys):
        dup = sorted({k for k in keys if keys.count(k) > 1})
        raise CanonicalJsonError(f"duplicate JSON keys {dup}")
    return dict(pairs)


def _refuse_constant(name: str) -> Any:
    raise CanonicalJsonError(f"{name} is not JSON")


def parse_json(text: str) -> Any:
    """Parse JSON strictly: no NaN/Infinity literals, no duplicate keys.

    Raises
    ------
    CanonicalJsonError
        If `text` is not strict JSON.
    """
    try:
        return json.loads(
            text, object_pairs_hook=_no_duplicate_keys, parse_constant=_refuse_constant
        )
    except json.JSONDecodeError as exc:
        raise CanonicalJsonError(f"not valid JSON: {exc}") from exc


def is_canonical(text: str) -> bool:
    """True when `text` is exactly the canonical JSON of the value it encodes."""
    try:
        return canonical_json(parse_json(text)) == text
    except CanonicalJsonError:
        return False
