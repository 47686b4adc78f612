"""What became of a silo's update, for a closed asynchronous buffer that holds none of it.

A buffer closes at its K-th update (or its deadline) while slower silos still train; a silo's
update then joins a later buffer with its staleness, or is dropped there as too stale. A
finished buffer waits for nobody, so `rounds.round_out` gives such a silo this as its reason
instead of leaving it as if the buffer still waited for it. The ``aggregate`` ledger entries
say it for both kinds of buffer (plain and secure): each contributor's base round, and who
was dropped as too stale with which staleness.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from sqlalchemy import select
from sqlalchemy.orm import Session

from aggregation.service.ledger import LedgerEntry
from aggregation.service.tables import Round

NOT_IN_BUFFER = "no update in this buffer"


@dataclass
class _Buffer:
    number: int
    input_version: int
    bases: dict[str, int] = field(default_factory=dict)  # contributor -> base round
    stale: dict[str, int] = field(default_factory=dict)  # dropped silo -> staleness


def fates(s: Session, rnd: Round, silos: list[str]) -> dict[str, str]:
    """For each of `silos` (none has an answer in the closed buffer `rnd`): where its update
    pending during `rnd` went (a later buffer, or dropped as too stale), else that it had
    none there."""
    later = _later_buffers(s, rnd)
    return {silo: _fate(silo, rnd, later) for silo in silos}


def _fate(silo: str, rnd: Round, later: list[_Buffer]) -> str:
    """The first later buffer that names `silo` says what its pending update became; one
    trained after `rnd` opened was not pending in it."""
    for buffer in later:
        if silo in buffer.bases:
            base = buffer.bases[silo]
            if base > rnd.number:
                return NOT_IN_BUFFER
            return f"its update of round {base} went into buffer {buffer.number}"
        if silo in buffer.stale:
            staleness = buffer.stale[silo]
            if buffer.input_version - staleness > rnd.input_model_version:
                return NOT_IN_BUFFER
            return f"its update was too stale for buffer {buffer.number} (staleness {staleness})"
    return NOT_IN_BUFFER


def _later_buffers(s: Session, rnd: Round) -> list[_Buffer]:
    """The run's aggregated buffers after `rnd`, in order, from their ``aggregate`` entries."""
    versions = dict(
        s.execute(
            select(Round.number, Round.input_model_version).where(
                Round.run_id == rnd.run_id, Round.number > rnd.number
            )
        ).all()
    )
    entries = s.scalars(
        select(LedgerEntry.payload)
        .where(LedgerEntry.run_id == rnd.run_id, LedgerEntry.kind == "aggregate")
        .order_by(LedgerEntry.seq)
    )
    buffers = []
    for payload in entries:
        doc = json.loads(payload)
        number = doc.get("round")
        if number not in versions:  # this buffer or an earlier one
            continue
        buffers.append(
            _Buffer(
                number=number,
                input_version=versions[number],
                bases={
                    c["silo"]: int(c["base_round"])
                    for c in doc.get("contributors", [])
                    if "base_round" in c
                },
                stale={d["silo"]: int(d["staleness"]) for d in doc.get("dropped_stale", [])},
            )
        )
    return sorted(buffers, key=lambda b: b.number)
