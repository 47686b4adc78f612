"""Long-polling without shared in-process state: the database holds the answer, and any
service process sharing it can answer any poll, so nothing is lost when a process dies.

A poll re-reads the database when a commit wakes it (`aggregation.service.wakeup`: this
process's commits, and on PostgreSQL every replica's by LISTEN/NOTIFY), and at the latest every
`interval_s`, the safety net for a missed wake. Without a wake-up hub it re-reads every
`interval_s`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import TypeVar

from starlette.concurrency import run_in_threadpool

from aggregation.service.wakeup import Wakeup

T = TypeVar("T")


async def long_poll(
    check: Callable[[], T | None],
    wait_s: float,
    interval_s: float,
    wakeup: Wakeup | None = None,
    *,
    answers: bool = False,
) -> T | None:
    """`check()` until it answers or `wait_s` passes; `answers`: also wake on silos' protocol
    messages (the coordinator's round wait counts them), not only on state changes."""
    deadline = time.monotonic() + max(0.0, wait_s)
    if wakeup is None:
        while True:
            result = await run_in_threadpool(check)
            if result is not None or time.monotonic() >= deadline:
                return result
            await asyncio.sleep(interval_s)
    with wakeup.subscribe(answers) as woken:
        while True:
            woken.clear()  # before the check: a commit during it wakes the next one
            result = await run_in_threadpool(check)
            remaining = deadline - time.monotonic()
            if result is not None or remaining <= 0 or wakeup.closing:
                return result
            wakeup.waiting += 1  # the event loop's thread only: no lock needed
            try:
                await asyncio.wait_for(woken.wait(), min(remaining, interval_s))
            except TimeoutError:
                pass
            finally:
                wakeup.waiting -= 1
