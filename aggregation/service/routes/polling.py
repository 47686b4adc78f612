"""Long-polling without in-process state: re-read the database until there is an answer.

Any service process sharing the database can answer any poll, so there is nothing to lose
when a process dies and nothing to share between processes.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import TypeVar

from starlette.concurrency import run_in_threadpool

T = TypeVar("T")


async def long_poll(check: Callable[[], T | None], wait_s: float, interval_s: float) -> T | None:
    deadline = time.monotonic() + max(0.0, wait_s)
    while True:
        result = await run_in_threadpool(check)
        if result is not None or time.monotonic() >= deadline:
            return result
        await asyncio.sleep(interval_s)
