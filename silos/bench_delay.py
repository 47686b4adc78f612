"""A bench-only slowdown: extra seconds of local training, to measure a straggling silo.

``FEDSILO_BENCH_TRAIN_DELAY_S`` (unset or 0 in every real deployment) adds that many seconds
to each local training step of the agent that has it in its environment; `bench/async_rounds.py`
gives one of four silos five times the others' delay. It is a real wait inside the round, so the
service and the coordinator see a slow silo exactly as they would a slow machine.
"""

from __future__ import annotations

import os
import time

ENV = "FEDSILO_BENCH_TRAIN_DELAY_S"


def bench_delay() -> float:
    """Sleep the configured delay; the seconds slept (0.0 when unset)."""
    raw = os.environ.get(ENV, "").strip()
    if not raw:
        return 0.0
    try:
        delay = float(raw)
    except ValueError as exc:
        raise ValueError(f"{ENV}={raw!r} is not a number of seconds") from exc
    if delay < 0:
        raise ValueError(f"{ENV}={raw!r} must be >= 0")
    time.sleep(delay)
    return delay
