"""The hub half of a toy round mode, ``prevalence``, registered as a service plugin.

It exists to prove that a round mode can be added through the registries alone: the service
imports this module because ``FEDSILO_SERVICE_PLUGINS=prevalence_hub`` names it, and nothing
else in the product knows the mode. Each silo is asked, through an `ExtensionTask`, for its
training-row and positive-label counts; the round's "model" is the federation's label
prevalence, stored through the same ledger pair (``aggregate`` + ``model_saved``) as every mode.
"""

from __future__ import annotations

import hashlib
import json

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from aggregation.service.engines.base import AfterCommit, Answer, RoundContext
from aggregation.service.engines.common import (
    answered,
    close_with_answers,
    contributors,
    round_fields,
)
from aggregation.service.engines.registry import register
from aggregation.service.exceptions import AlreadyAnswered, InvalidPayload
from aggregation.service.model_store import save_round_model
from aggregation.service.tables import Contribution
from schemas.tasks import ExtensionTask, Task

MODE = "prevalence"


class Counts(BaseModel):
    """A silo's answer: how many training rows it has and how many are positive."""

    model_config = ConfigDict(extra="forbid")
    rows: int = Field(ge=1, le=2**31 - 1)
    positives: int = Field(ge=0, le=2**31 - 1)


class PrevalenceEngine:
    def start(self, ctx: RoundContext, deadline_s: float) -> AfterCommit | None:
        return None

    def task_for(self, ctx: RoundContext, silo: str) -> Task | None:
        if answered(ctx, silo):
            return None
        return ExtensionTask(**round_fields(ctx), mode=MODE, body={"count": "training labels"})

    def receive(self, ctx: RoundContext, answer: Answer) -> dict[str, object]:
        try:
            counts = Counts.model_validate_json(answer.body)
        except ValidationError as exc:
            raise InvalidPayload(f"prevalence answer from silo {answer.silo!r}: {exc}") from exc
        if counts.positives > counts.rows:
            raise InvalidPayload(f"silo {answer.silo!r} claims more positives than rows")
        rnd = ctx.rnd
        if ctx.s.get(Contribution, (rnd.run_id, rnd.number, answer.silo)) is not None:
            raise AlreadyAnswered(f"silo {answer.silo!r} already answered round {rnd.number}")
        ctx.s.add(
            Contribution(
                run_id=rnd.run_id,
                round=rnd.number,
                silo=answer.silo,
                kind="update",
                digest=hashlib.sha256(answer.body).hexdigest(),
                n_examples=counts.rows,
                payload=answer.body,
            )
        )
        return {"accepted": True}

    def advance(self, ctx: RoundContext, *, force: bool) -> None:
        return None

    def close(self, ctx: RoundContext) -> None:
        close_with_answers(ctx, _prevalence)


def _prevalence(ctx: RoundContext, updates: list[Contribution]) -> None:
    counts = [Counts.model_validate_json(c.payload or b"") for c in updates]
    rows, positives = sum(c.rows for c in counts), sum(c.positives for c in counts)
    model = json.dumps({"rows": rows, "positives": positives, "prevalence": positives / rows})
    data = model.encode()
    entry = {"round": ctx.rnd.number, "contributors": contributors(updates), "mode": MODE}
    save_round_model(
        ctx.s, ctx.run, ctx.rnd, data, hashlib.sha256(data).hexdigest(), entry, ctx.hub.recorder
    )


register(MODE, PrevalenceEngine())
