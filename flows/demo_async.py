"""`fedsilo demo --async`: the demo's PyTorch run as FedBuff buffers (`RunSpec.asynchronous`).

A buffer of n-1 updates closes as soon as all but one silo answered, so the slowest hospital
never holds a round up; its update joins the next buffer, weighted by 1/sqrt(1+staleness).
The run applies about as many updates as the synchronous demo (ceil(rounds * n / (n-1))
buffers). Secure aggregation is off in this mode for now (the service sees each update).
"""

from __future__ import annotations

import math

from flows.exceptions import DemoError
from schemas.specs import AsyncSpec, RunSpec, SecureAggregationSpec


def async_update(spec: RunSpec, n_silos: int, rounds: int, dp: bool) -> dict[str, object]:
    """The fields `demo_spec` changes for --async (`rounds`: the synchronous round count)."""
    if dp:
        raise DemoError(
            "--async aggregates plain updates for now, and DP noise is calibrated for the "
            "securely aggregated sum: drop --dp or --async"
        )
    k = max(1, n_silos - 1)
    return {
        "asynchronous": AsyncSpec(buffer_size=k),
        "secure_aggregation": SecureAggregationSpec(enabled=False),
        "min_silos": min(spec.min_silos, k),
        "rounds": math.ceil(rounds * n_silos / k),
    }
