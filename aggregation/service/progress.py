"""A round as the coordinator sees it, with its progress: the stage it is at and the silos
that stage still waits for (`RoundEngine.awaited`), so nobody is named missing who answered."""

from __future__ import annotations

from sqlalchemy.orm import Session

from aggregation.service.engines.base import Hub, RoundContext
from aggregation.service.engines.common import awaited_default
from aggregation.service.engines.registry import engine_for
from aggregation.service.exceptions import Conflict
from aggregation.service.rounds import round_out
from aggregation.service.runs import get_run, spec_of
from aggregation.service.tables import Round
from schemas.wire import RoundOut


def round_view(s: Session, rnd: Round, hub: Hub) -> RoundOut:
    """`rounds.round_out` plus ``stage`` and ``awaited`` (empty once the round is over)."""
    out = round_out(s, rnd)
    if rnd.status != "open":
        return out.model_copy(update={"stage": rnd.secagg_stage})
    run = get_run(s, rnd.run_id)
    spec = spec_of(run)
    ctx = RoundContext(s, run, rnd, spec, hub)
    try:
        engine = engine_for(spec, rnd)
    except Conflict:  # its plugin is not loaded here: say what the answers say
        return out.model_copy(update={"awaited": sorted(awaited_default(ctx))})
    # plugin engines written before `awaited` existed get the default
    awaited = getattr(engine, "awaited", None)
    stage = getattr(engine, "stage", None)
    return out.model_copy(
        update={
            "awaited": sorted(awaited(ctx) if awaited else awaited_default(ctx)),
            "stage": stage(ctx) if stage else rnd.secagg_stage,
        }
    )
