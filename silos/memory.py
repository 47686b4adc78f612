"""Handing memory back to the system once a burst of work is over (lean agents, issue 20).

The warm-up (Great Expectations' validation, loading the table) leaves freed objects behind:
Python collects them, but glibc keeps the freed heap pages mapped until asked to trim, so an
idle agent would go on holding its warm-up's peak. `release()` collects, then trims where the
C library is glibc (elsewhere the trim is skipped: nothing breaks, less is returned).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
from functools import cache


@cache
def _malloc_trim() -> object | None:
    name = ctypes.util.find_library("c")
    try:
        return getattr(ctypes.CDLL(name), "malloc_trim", None) if name else None
    except OSError:
        return None


def release() -> None:
    """Collect garbage and return free heap pages to the operating system."""
    gc.collect()
    trim = _malloc_trim()
    if trim is not None:
        trim(0)  # type: ignore[operator]
