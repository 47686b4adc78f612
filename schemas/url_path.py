"""Service URLs built from names and ids: each value becomes exactly one escaped path segment
or query value.

Names and ids come from people (CLI arguments, config files) and from peers. Pasted into a URL
unescaped, "typo/../hungary" is normalised by the HTTP client to ``.../hungary`` (another
silo), "a?b" starts a query and "heart&x=" adds a query parameter. Every URL that carries such
a value builds it with `seg` and `query`, so the service sees the value whole and refuses it
by its own name rule (``schemas.wire.NAME_PATTERN``) when it is not a name.
"""

from __future__ import annotations

from urllib.parse import quote, urlencode


def seg(value: str | int) -> str:
    """`value` as one URL path segment: every reserved character is percent-escaped, and so are
    the dots of "." and ".." (which clients and proxies would resolve against the path).

    Raises
    ------
    ValueError
        If `value` is empty: it would silently address the collection instead of an item.
    """
    text = str(value)
    if not text:
        raise ValueError("an empty name or id cannot address a resource (URL path segment)")
    if text in (".", ".."):
        return text.replace(".", "%2E")
    return quote(text, safe="")


def query(**params: str | int | float | bool | None) -> str:
    """``"?k=v&..."`` with every value escaped (None values left out; "" when none is left)."""
    kept = {k: str(v).lower() if isinstance(v, bool) else v for k, v in params.items()}
    kept = {k: v for k, v in kept.items() if v is not None}
    return "?" + urlencode(kept) if kept else ""
