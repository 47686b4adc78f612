"""The silo half of the toy round mode ``prevalence`` (see `prevalence_hub`), a handler plugin.

The agent imports it because silo.toml lists it (``[agent] plugins = ["prevalence_silo"]``):
the coordinator never names code. It answers with the silo's training-row and positive-label
counts, nothing else.
"""

from __future__ import annotations

import json

from pydantic import BaseModel

from schemas.tasks import ExtensionTask
from silos.handlers.context import SiloContext
from silos.handlers.registry import register_extension


class CountRequest(BaseModel):
    count: str


def answer_counts(ctx: SiloContext, task: ExtensionTask, body: CountRequest) -> None:
    y = ctx.data.y_train
    counts = {"rows": int(len(y)), "positives": int((y > 0.5).sum())}
    ctx.client.submit_extension(task.run_id, task.round, json.dumps(counts).encode())


register_extension("prevalence", answer_counts, CountRequest)
