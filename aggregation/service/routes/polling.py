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
    subscribed: asyncio.Event | None = None,
) -> T | None:
    """`check()` until it answers or `wait_s` passes; `answers`: also wake on silos' protocol
    messages (the coordinator's round wait counts them), not only on state changes.

    `subscribed`: an event of `wakeup` the caller subscribed before its own write. The first
    check then waits for a wake (that write's commit's own included), since nothing the
    caller can be waiting for changed without one: a silo's answer that does not close its
    stage would only find that its next stage has not opened yet."""
    deadline = time.monotonic() + max(0.0, wait_s)
    if wakeup is None:
        while True:
            result = await run_in_threadpool(check)
            if result is not None or time.monotonic() >= deadline:
                return result
            await asyncio.sleep(interval_s)
    if subscribed is not None:
        return await _poll(check, deadline, interval_s, wakeup, subscribed, skip_first=True)
    with wakeup.subscribe(answers) as woken:
        return await _poll(check, deadline, interval_s, wakeup, woken, skip_first=False)


async def _poll(
    check: Callable[[], T | None],
    deadline: float,
    interval_s: float,
    wakeup: Wakeup,
    woken: asyncio.Event,
    *,
    skip_first: bool,
) -> T | None:
    result: T | None = None
    while True:
        if not skip_first or woken.is_set():
            woken.clear()  # before the check: a commit during it wakes the next one
            result = await run_in_threadpool(check)
        skip_first = False  # the wait below times out into a check: the safety net
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
