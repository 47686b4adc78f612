"""What an admin token must look like, for the CLI that sends it and the service that reads it
from a file: one line of printable ASCII, since it travels in an `Authorization` header."""

from __future__ import annotations


def token_problem(raw: str | bytes) -> str | None:
    """What keeps `raw` (surrounding whitespace aside) from being one admin token, or None.

    A token travels in an `Authorization` header, so it must be one line of printable ASCII;
    anything else (a comment line, a byte-order mark, an accented letter) would fail at send
    time with an error that quotes the header. The answer never quotes the token.
    """
    if isinstance(raw, bytes):
        try:
            raw = raw.decode("ascii")
        except UnicodeDecodeError as exc:
            return f"has a byte that is not ASCII at position {exc.start + 1}"
    lines = raw.strip().splitlines()
    if not lines:
        return "is empty"
    if len(lines) > 1:
        return f"holds {len(lines)} lines; it must hold the token alone, on one line"
    bad = next((i for i, ch in enumerate(raw.strip()) if not " " <= ch <= "~"), None)
    if bad is not None:
        return f"has a character that is not printable ASCII at position {bad + 1}"
    return None
