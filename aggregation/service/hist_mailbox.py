"""Secure-hist messages in and tasks out: what each silo must do next, and checking what it sent.

Every message is checked against the run's state before anything is stored: its kind for the
stage, that it is bound to this run, this silo and the open aggregation's counter, the
session's own checks (signature, length, share recipients, survivor list), and for a level's
masked vector that the silo answers the level the service asked for (tree, depth and nodes).
Masked vectors arrive packed to their wire widths (`hist_wire`); the signature covers the
reduced vector rebuilt from them.
A refused message leaves the state and the mailbox untouched; a retried one counts once.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from aggregation.secagg import session_server
from aggregation.service import hist_wire
from aggregation.service.exceptions import AlreadyAnswered, Conflict, InvalidPayload
from aggregation.service.hist_state import HistState, first_purpose, pending_level
from aggregation.service.tables import HistMessage, Round, Run
from aggregation.trees.secure_hist.grow import check_vector
from schemas.secagg.exceptions import DuplicateMessageError, LateMessageError, SecAggError
from schemas.secagg.messages import Signed
from schemas.secagg.session_messages import (
    SETUP_COUNTER,
    AggregationRequest,
    SessionAdvert,
    SessionConsistency,
    SessionMasked,
    SessionUnmaskResponse,
)
from schemas.secure_hist import packing
from schemas.secure_hist.errors import SecureHistError, UnknownNodeError

STAGES: dict[str, type[Signed]] = {
    "advertise": SessionAdvert,
    "masked": SessionMasked,
    "consistency": SessionConsistency,
    "unmask": SessionUnmaskResponse,
}


@dataclass(frozen=True)
class LevelClaim:
    """Which level a masked vector answers, as the silo states it (query parameters)."""

    tree: int | None = None
    depth: int | None = None
    nodes: tuple[int, ...] = ()


def _stage_now(state: HistState) -> tuple[str, int]:
    """(stage the run accepts now, its counter)."""
    if state.phase == "advertise":
        return "advertise", SETUP_COUNTER
    agg = state.server.current
    if state.phase != "aggregate" or agg is None:
        return state.phase, state.server.counter
    return agg.stage, agg.counter


def receive(
    s: Session,
    run: Run,
    rnd: Round,
    state: HistState,
    stage: str,
    silo: str,
    raw: bytes,
    claim: LevelClaim,
) -> bool:
    """Check one message and store it in the mailbox; False for a retry of a stored one.

    Raises Conflict (409) for a message out of turn, AlreadyAnswered (409) for a second,
    different one, and InvalidPayload (422) for anything malformed, wrongly bound or
    inconsistent.
    """
    where = f"secure-hist {stage} message from silo {silo!r} (run {run.id})"
    if rnd.status != "open":
        raise Conflict(f"{where}: round {rnd.number} is {rnd.status}")
    msg = _parse(stage, silo, run.id, raw, where)
    digest = hashlib.sha256(raw).hexdigest()
    stored = s.scalar(
        select(HistMessage.digest).where(
            HistMessage.run_id == run.id,
            HistMessage.counter == msg.round_num,
            HistMessage.stage == stage,
            HistMessage.silo == silo,
        )
    )
    if stored is not None:
        if stored == digest:
            return False
        raise AlreadyAnswered(f"{where}: a different message for counter {msg.round_num} stands")
    now, counter = _stage_now(state)
    if msg.round_num != counter:
        raise InvalidPayload(
            f"{where} is for aggregation counter {msg.round_num}; the open one is {counter} "
            "(stale, replayed or from the future: discard it)"
        )
    if stage != now:
        raise Conflict(f"{where} is out of turn: the run is at {now} of counter {counter}")
    if stage == "masked":  # the vector at the wire widths of the open aggregation
        try:
            msg = hist_wire.open_masked(state, raw, silo)
        except (SecAggError, SecureHistError) as exc:
            raise InvalidPayload(f"{where}: {exc}") from exc
    _check_and_apply(state, msg, silo, claim, where)
    s.add(
        HistMessage(
            run_id=run.id,
            round=rnd.number,
            counter=msg.round_num,
            stage=stage,
            silo=silo,
            digest=digest,
            payload=raw,
        )
    )
    s.flush()
    return True


def _parse(stage: str, silo: str, run_id: str, raw: bytes, where: str) -> Signed:
    """The message of `stage`, bound to this silo and run (InvalidPayload otherwise); of a
    packed masked vector only its header (the vector is read once the stage is known)."""
    if stage not in STAGES:
        raise InvalidPayload(f"unknown secure-hist stage {stage!r}; one of {sorted(STAGES)}")
    try:
        msg = packing.masked_head(raw) if stage == "masked" else STAGES[stage].from_bytes(raw)
    except (SecAggError, SecureHistError) as exc:
        raise InvalidPayload(f"{where}: {exc}") from exc
    if msg.silo != silo or msg.run_id != run_id:
        raise InvalidPayload(f"{where} is bound to silo {msg.silo!r} and run {msg.run_id}")
    if not 0 <= msg.round_num < 2**31:  # before any query: SQLite overflows past 64 bits
        raise InvalidPayload(f"{where}: aggregation counter {msg.round_num} is out of range")
    return msg


def _check_and_apply(
    state: HistState, msg: Signed, silo: str, claim: LevelClaim, where: str
) -> None:
    """The session's own checks (and a level's), then the message into the state."""
    try:
        if isinstance(msg, SessionMasked):
            _check_level(state, silo, msg.vector, claim)
        _apply(state, msg)
    except DuplicateMessageError as exc:
        raise AlreadyAnswered(f"{where}: {exc}") from exc
    except LateMessageError as exc:
        raise Conflict(f"{where}: {exc}") from exc
    except (SecAggError, SecureHistError) as exc:
        raise InvalidPayload(f"{where}: {exc}") from exc


def _check_level(state: HistState, silo: str, vector: np.ndarray, claim: LevelClaim) -> None:
    """A level's vector must answer the pending LevelRequest: same tree, depth and nodes."""
    req = pending_level(state)
    if req is None:
        if claim.tree is not None or claim.nodes:
            raise UnknownNodeError(
                "the open aggregation sums setup vectors, not a level", silo=silo
            )
        return
    assert state.grower is not None
    asked = tuple(c.node for c in req.compute)
    if (claim.tree, claim.depth, claim.nodes) != (req.tree, req.depth, asked):
        unknown = sorted(set(claim.nodes) - set(asked))
        raise UnknownNodeError(
            f"the vector answers tree {claim.tree} depth {claim.depth} nodes "
            f"{list(claim.nodes)}; the open level is tree {req.tree} depth {req.depth} nodes "
            f"{list(asked)}",
            silo=silo,
            tree=claim.tree,
            depth=claim.depth,
            node=unknown[0] if unknown else None,
        )
    check_vector(state.grower, vector, silo)


def _apply(state: HistState, msg: Signed) -> None:
    srv = state.server
    if isinstance(msg, SessionAdvert):
        session_server.receive_advert(srv, msg)
    elif isinstance(msg, SessionMasked):
        session_server.receive_masked(srv, msg)
    elif isinstance(msg, SessionConsistency):
        session_server.receive_consistency(srv, msg)
    else:
        assert isinstance(msg, SessionUnmaskResponse)
        session_server.receive_unmask(srv, msg)


def inbox(state: HistState, silo: str, counter: int) -> list[bytes] | None:
    """The binary messages `silo` needs for its step of aggregation `counter`, or None.

    At the masked stage: the `AggregationRequest`, then at the first aggregation every silo's
    `SessionAdvert` in roster order; at the unmask stage: its `SessionUnmaskRequest`.
    """
    srv = state.server
    agg = srv.current
    if state.phase != "aggregate" or agg is None or agg.counter != counter:
        return None
    if agg.stage == "masked" and silo in agg.active:
        request = AggregationRequest(srv.config.run_id, agg.counter, "service", agg.active, agg.dim)
        frames = [request.to_bytes()]
        if state.purpose == first_purpose(state.config):  # the session's first aggregation
            frames += [srv.adverts[s].to_bytes() for s in srv.config.silos if s in srv.adverts]
        return frames
    if agg.stage == "unmask" and silo in agg.survivors:
        unmask = session_server.unmask_requests(srv).get(silo)
        return [unmask.to_bytes()] if unmask is not None else None
    return None
