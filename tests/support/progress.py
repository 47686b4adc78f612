"""Waits that fit a loaded machine: give up only when nothing has moved for a while.

A fixed deadline that holds on an idle machine fails on a shared 2-core runner where everything
is ten times slower. `wait_progressing` instead keeps waiting as long as a progress signal (log
sizes, ledger rows, rounds closed) keeps changing, and fails when it stands still for `idle_s`
or when the hard ceiling `max_s` (a hang that still writes logs) has passed.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Hashable, Iterable
from pathlib import Path
from typing import Any

# How long nothing may change before a wait gives up; Great Expectations' cold start in a silo
# agent alone took ~50 s on a loaded 2-core machine (issue 15), with no log line meanwhile.
IDLE_S = 300.0
MAX_S = 1500.0
PROGRESS_EVERY_S = 1.0


def wait_progressing(
    condition: Callable[[], Any],
    progress: Callable[[], Hashable],
    what: str,
    logs: Callable[[], str] = str,
    idle_s: float = IDLE_S,
    max_s: float = MAX_S,
    poll_s: float = 0.05,
) -> Any:
    """Poll `condition` until it returns something truthy, and return that.

    Fails naming `what` (with `logs()`) once `progress()` has returned the same value for
    `idle_s`, or `max_s` after the start whatever happens.
    """
    start = last_change = checked = time.monotonic()
    seen = progress()
    while True:
        value = condition()
        if value:
            return value
        now = time.monotonic()
        if now - checked >= PROGRESS_EVERY_S:  # globbing logs and counting rows is not free
            checked, current = now, progress()
            if current != seen:
                seen, last_change = current, now
        if now - last_change > idle_s or now - start > max_s:
            stalled = now - last_change > idle_s
            why = f"no progress for {idle_s:.0f}s" if stalled else f"still going after {max_s:.0f}s"
            raise AssertionError(f"timed out waiting for {what}: {why}\n{logs()}")
        time.sleep(poll_s)


def file_sizes(roots: Iterable[Path], pattern: str = "*.log") -> tuple[int, ...]:
    """Sizes of the files matching `pattern` under `roots`: grows while processes log."""
    sizes = []
    for root in roots:
        for path in sorted(root.rglob(pattern)):
            try:
                sizes.append(path.stat().st_size)
            except FileNotFoundError:  # rotated or removed between glob and stat
                continue
    return tuple(sizes)


def join_progressing(
    thread: threading.Thread,
    progress: Callable[[], Hashable],
    what: str,
    logs: Callable[[], str] = str,
    idle_s: float = IDLE_S,
    max_s: float = MAX_S,
) -> None:
    """Join `thread`, failing only when `progress()` stands still (see `wait_progressing`)."""
    wait_progressing(
        lambda: not thread.is_alive(), progress, what, logs, idle_s=idle_s, max_s=max_s, poll_s=0.2
    )
