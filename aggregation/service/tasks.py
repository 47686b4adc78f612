"""The next piece of work for a silo, derived from the database on every poll."""

from __future__ import annotations

import json
from typing import Literal

from sqlalchemy import select
from sqlalchemy.orm import Session

from aggregation.service import hist_rounds, secure_rounds, tree_rounds
from aggregation.service.hist_mailbox import hist_task
from aggregation.service.rounds import get_round
from aggregation.service.runs import spec_of
from aggregation.service.tables import Contribution, Round, Run, RunSilo
from schemas.wire import SecAggInfo, Task

_SECAGG_TASK: dict[
    str, Literal["secagg_advertise", "secagg_share", "train", "secagg_unmask", "statistics"]
] = {
    "advertise": "secagg_advertise",
    "share": "secagg_share",
    "masked": "train",
    "unmask": "secagg_unmask",
}


def next_task(
    s: Session, federation: str, silo: str, run_id: str | None, seal_public: bytes = b""
) -> Task | None:
    """The work waiting for `silo`, or None. With `run_id`, also tells when that run ended.

    `seal_public` is the service's X25519 key, handed to silos of tree runs to seal updates to.
    """
    stmt = (
        select(Run, RunSilo)
        .join(RunSilo, RunSilo.run_id == Run.id)
        .where(Run.federation == federation, RunSilo.silo == silo)
    )
    if run_id is not None:
        stmt = stmt.where(Run.id == run_id)
    else:
        stmt = stmt.where(Run.status == "running", RunSilo.status == "active")
    for run, membership in s.execute(stmt.order_by(Run.created_at)).all():
        if run.status in ("finished", "failed") or membership.status != "active":
            return Task(type="run_ended", run_id=run.id, run_status=run.status)
        if run.status != "running" or run.current_round == 0:
            continue
        rnd = get_round(s, run.id, run.current_round)
        if rnd.status != "open":
            continue
        spec = spec_of(run)
        if hist_rounds.is_hist_round(spec, rnd):
            row = hist_rounds.hist_row(s, run.id)
            task = hist_task(s, run, rnd, spec, row, silo, _stats(run)) if row else None
        elif rnd.secagg_stage:  # also the statistics round of a tree run
            task = _secure_task(s, run, rnd, silo)
        elif spec.trees is not None:
            task = tree_rounds.tree_task(s, run, rnd, spec, silo, seal_public)
        else:
            task = _plain_task(s, run, rnd, silo)
        if task is not None:
            return task
    return None


def _plain_task(s: Session, run: Run, rnd: Round, silo: str) -> Task | None:
    if s.get(Contribution, (run.id, rnd.number, silo)) is not None:
        return None
    return Task(
        type="train" if rnd.kind == "train" else "evaluate",
        run_id=run.id,
        round=rnd.number,
        model_version=rnd.input_model_version,
        spec=spec_of(run),
        stats=_stats(run),
    )


def _stats(run: Run) -> list[float] | None:
    return json.loads(run.federation_stats) if run.federation_stats else None


def _secure_task(s: Session, run: Run, rnd: Round, silo: str) -> Task | None:
    stage = rnd.secagg_stage or "advertise"
    if silo not in secure_rounds.waiting_for(s, rnd, stage):
        return None
    spec = spec_of(run)
    cfg = secure_rounds.config(rnd, spec)
    weight = secure_rounds.weights_of(s, rnd, spec).get(silo) if stage != "advertise" else None
    info = SecAggInfo(
        stage=stage,  # type: ignore[arg-type]
        roster=list(cfg.silos),
        roster_keys={k: v.hex() for k, v in secure_rounds.roster_keys(s, run, rnd).items()},
        threshold=cfg.threshold,
        dim=cfg.dim,
        bits=cfg.bits,
        degree=cfg.degree,
        clip=secure_rounds.quantizer(rnd, spec).clip,
        weight=weight,
    )
    kind = "statistics" if stage == "masked" and rnd.kind == "statistics" else _SECAGG_TASK[stage]
    return Task(
        type=kind,  # type: ignore[arg-type]
        run_id=run.id,
        round=rnd.number,
        model_version=rnd.input_model_version,
        spec=spec,
        secagg=info,
        stats=_stats(run),
    )
