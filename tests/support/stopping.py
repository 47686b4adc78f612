"""Stop a test's processes together: one shared grace period instead of one each."""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Iterable

from flows.processes import Proc

STOP_GRACE_S = 10.0  # what `Proc.stop` allows one process; `stop_all` allows it to all at once


def stop_all(procs: Iterable[Proc], grace_s: float = STOP_GRACE_S) -> None:
    """SIGINT every process at once, then SIGKILL whatever still runs after `grace_s`.

    One by one (`Proc.stop`) a federation's teardown took ~50 s: each agent spends seconds in
    interpreter shutdown after it says "stopped", and the service finishes its in-flight long
    polls first, so five processes used up their 10 s grace in turn.
    """
    alive = [p for p in procs if p.alive()]
    for p in alive:
        p.popen.send_signal(signal.SIGINT)
    deadline = time.monotonic() + grace_s
    for p in alive:
        try:
            p.popen.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill9()
