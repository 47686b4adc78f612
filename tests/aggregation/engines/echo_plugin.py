"""A plugin round mode for tests: ``echo``. Importing this module registers it.

Each silo gets an `ExtensionTask` asking it to send a JSON number; the round's "model" is the
sum of the numbers (stored as JSON bytes through the shared ledger pair). It is what a
plugin author writes: one engine class, one `register` line.
"""

from __future__ import annotations

import hashlib
import json

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

MODE = "echo"


class EchoEngine:
    def start(self, ctx: RoundContext, deadline_s: float) -> AfterCommit | None:
        return None

    def task_for(self, ctx: RoundContext, silo: str) -> Task | None:
        if answered(ctx, silo):
            return None
        body = {"send": "a JSON number", "silo": silo}
        return ExtensionTask(**round_fields(ctx), mode=MODE, body=body)

    def receive(self, ctx: RoundContext, answer: Answer) -> dict[str, object]:
        rnd = ctx.rnd
        try:
            value = float(json.loads(answer.body))
        except (ValueError, TypeError) as exc:
            raise InvalidPayload(f"echo answer from silo {answer.silo!r}: {exc}") from exc
        digest = hashlib.sha256(answer.body).hexdigest()
        existing = ctx.s.get(Contribution, (rnd.run_id, rnd.number, answer.silo))
        if existing is not None:
            if existing.digest == digest:
                return {"duplicate": True, "value": value}
            raise AlreadyAnswered(f"silo {answer.silo!r} already answered round {rnd.number}")
        ctx.s.add(
            Contribution(
                run_id=rnd.run_id,
                round=rnd.number,
                silo=answer.silo,
                kind="update",
                digest=digest,
                n_examples=1,
                payload=answer.body,
            )
        )
        return {"duplicate": False, "value": value}

    def advance(self, ctx: RoundContext, *, force: bool) -> None:
        return None

    def close(self, ctx: RoundContext) -> None:
        close_with_answers(ctx, _sum)


def _sum(ctx: RoundContext, updates: list[Contribution]) -> None:
    total = sum(float(json.loads(c.payload or b"0")) for c in updates)
    model = json.dumps({"sum": total}).encode()
    entry = {"round": ctx.rnd.number, "contributors": contributors(updates), "mode": MODE}
    sha = hashlib.sha256(model).hexdigest()
    save_round_model(ctx.s, ctx.run, ctx.rnd, model, sha, entry, ctx.hub.recorder)


register(MODE, EchoEngine())
