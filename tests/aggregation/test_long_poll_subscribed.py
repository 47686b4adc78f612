"""`long_poll` with an event the caller subscribed before its own write (an answer that asks
for its next task): the first check waits for a wake, the write's own commit's included, and
the safety-net interval still checks when no wake comes."""

from __future__ import annotations

import asyncio
import threading

from aggregation.service.routes.polling import long_poll
from aggregation.service.wakeup import ALL, ANSWERS, Wakeup


class Checks:
    """A check that answers `answer` and counts its calls."""

    def __init__(self, answer: str | None = "task") -> None:
        self.calls = 0
        self.answer = answer
        self.called = threading.Event()

    def __call__(self) -> str | None:
        self.calls += 1
        self.called.set()
        return self.answer


def test_the_first_check_waits_for_a_wake() -> None:
    async def scenario() -> tuple[int, str | None, int]:
        wakeup, check = Wakeup(), Checks()
        with wakeup.subscribe() as woken:
            poll = asyncio.ensure_future(long_poll(check, 30, 30, wakeup, subscribed=woken))
            await asyncio.sleep(0.3)  # a first check, had it run, would have answered by now
            before = check.calls
            wakeup.wake(ANSWERS)  # another silo's answer: not for this poll
            await asyncio.sleep(0.1)
            still = check.calls
            wakeup.wake(ALL)  # the stage closed
            result = await asyncio.wait_for(poll, 30)
        return before, result, still

    before, result, still = asyncio.run(scenario())
    assert (before, still, result) == (0, 0, "task")


def test_a_wake_before_the_poll_began_checks_at_once() -> None:
    async def scenario() -> str | None:
        wakeup, check = Wakeup(), Checks()
        with wakeup.subscribe() as woken:
            wakeup.wake(ALL)  # the answer's own commit closed the stage
            return await asyncio.wait_for(long_poll(check, 30, 30, wakeup, subscribed=woken), 30)

    assert asyncio.run(scenario()) == "task"


def test_without_a_wake_the_interval_checks_and_the_wait_ends() -> None:
    async def scenario() -> tuple[str | None, int, str | None]:
        wakeup, check, empty = Wakeup(), Checks(), Checks(answer=None)
        with wakeup.subscribe() as woken:
            found = await asyncio.wait_for(long_poll(check, 30, 0.05, wakeup, subscribed=woken), 30)
        with wakeup.subscribe() as woken:
            none = await asyncio.wait_for(long_poll(empty, 0.3, 0.05, wakeup, subscribed=woken), 30)
        return found, empty.calls, none

    found, calls, none = asyncio.run(scenario())
    assert found == "task" and none is None and calls >= 1
