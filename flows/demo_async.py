"""`fedsilo demo --async`: the demo's PyTorch run as FedBuff buffers (`RunSpec.asynchronous`).

A buffer of n-1 updates closes as soon as all but one silo answered, so the slowest hospital
never holds a round up; its update joins the next buffer, weighted by 1/sqrt(1+staleness).
The run applies about as many updates as the synchronous demo (ceil(rounds * n / (n-1))
buffers). Secure aggregation stays on, as in the synchronous demo: each buffer's cohort of
ready silos masks its updates and the service learns only the buffer's weighted sum
(`--plain` turns it off to compare).
"""

from __future__ import annotations

import math

from flows.demo_refusals import DemoOptionError
from schemas.specs import AsyncSpec, RunSpec


def async_update(
    spec: RunSpec, n_silos: int, rounds: int, dp: bool, secure: bool
) -> dict[str, object]:
    """The fields `demo_spec` changes for --async (`rounds`: the synchronous round count;
    `secure`: whether the run aggregates securely)."""
    if dp:
        raise DemoOptionError(
            ("--async", "--dp"),
            "--async weights each update by its staleness, which would rescale the silos' "
            "calibrated DP noise: drop --dp or --async",
        )
    # a secure buffer's cohort needs two silos at least (the sum of one is its update)
    k = max(2 if secure else 1, n_silos - 1)
    return {
        "asynchronous": AsyncSpec(buffer_size=k),
        "min_silos": min(spec.min_silos, k),
        "rounds": math.ceil(rounds * n_silos / k),
    }
