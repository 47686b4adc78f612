"""What the aggregation service holds, for tests that prove something never reached it:
every value in its SQLite database and every file in its workspace."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import numpy as np

from support.fault_helpers import Federation


def service_bytes(fed: Federation) -> list[bytes]:
    """Every value in the service's database (bytes as is, text encoded) and every file in its
    workspace."""
    found: list[bytes] = []
    db = Path(fed.db_url.removeprefix("sqlite:///"))
    with sqlite3.connect(db) as conn:
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        for table in tables:
            for row in conn.execute(f'SELECT * FROM "{table}"'):  # noqa: S608 (names from sqlite)
                for value in row:
                    if isinstance(value, bytes):
                        found.append(value)
                    elif isinstance(value, str):
                        found.append(value.encode())
    found += [p.read_bytes() for p in (fed.root / "service").rglob("*") if p.is_file()]
    return found


def holds(needle: np.ndarray, haystack: list[bytes]) -> bool:
    """`needle` as float32 bytes, raw or hex, anywhere in `haystack`."""
    raw = np.ascontiguousarray(needle, dtype=np.float32).tobytes()
    return any(raw in blob or raw.hex().encode() in blob for blob in haystack)
