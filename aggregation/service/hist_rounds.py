"""Secure-histogram boosting (tree mode ``secure-hist``) at the service: rounds, levels, dropouts.

Mapping onto the coordinator's rounds: round r of the run grows `trees_per_round` trees. The
first training round starts with the session setup (every silo advertises session keys), the
silos' row counts (one entry: its sum bounds the setup vector's wire widths) and the setup
aggregation (fine-grid counts, rows, label sum -> cut points and base score); then
every tree costs one aggregation per depth level (`aggregation/trees/secure_hist/README.md`).
Each aggregation runs the session's stages masked -> consistency -> unmask; the service moves
on by itself whenever nobody is awaited (`advance`), as `secure_rounds` does for the per-round
protocol, and the round closes itself with the model once its last tree is done: an XGBoost
JSON model of every tree so far, stored as the round's model version.

Deadline (`close`, the coordinator's close at the round deadline): whoever has not answered the
current stage is a dropout. At the masked stage the silent silos are recovered from the
survivors' answers and leave the run; a survivor silent at the consistency or unmask stage
makes the aggregation be abandoned and run again without it. A silo that left below a tree's
root level makes that tree be grown again from its root (earlier levels held its rows). A silo
that leaves is marked refused in the run with the reason, so the run's later rounds do not
wait for it; fewer than t silos fail the round.

All state is in the database (`hist_state`, `HistRun`, `HistMessage`), changed under the round
row's lock, so several service processes can share one PostgreSQL and a restart continues.
"""

from __future__ import annotations

import numpy as np
from sqlalchemy import select, update
from sqlalchemy.orm import Session, object_session

from aggregation.secagg import session_server
from aggregation.service import hist_setup, hist_wire
from aggregation.service.contributions import sat_out_reasons
from aggregation.service.exceptions import Conflict
from aggregation.service.hist_results import finish_round
from aggregation.service.hist_state import (
    HistState,
    first_purpose,
    hist_row,
    load,
    pending_level,
    save,
)
from aggregation.service.lineage import Recorder
from aggregation.service.rounds import active_silos
from aggregation.service.tables import (
    Contribution,
    HistMessage,
    Round,
    Run,
    RunSilo,
    utcnow,
)
from aggregation.trees.secure_hist.cuts import base_score_from_setup, cuts_from_setup
from aggregation.trees.secure_hist.grow import receive_level, start_tree
from schemas.secagg.exceptions import InsufficientSharesError, SecAggError
from schemas.secure_hist.protocol import LevelRequest, cuts_from_json, cuts_to_json
from schemas.specs import RunSpec


def open_round(s: Session, run: Run, rnd: Round, spec: RunSpec, recorder: Recorder) -> None:
    """Round `rnd` opened: the run's session setup (first round) or the round's first tree.
    Opening the same round again (a retried request) changes nothing."""
    row = hist_row(s, run.id, for_update=True)
    if row is None:
        hist_setup.new_state(s, run, rnd, spec)
        return
    state = load(row)
    if state.round == rnd.number:
        return
    if state.phase != "between":
        raise Conflict(
            f"run {run.id}: secure-hist round {state.round} is {state.phase}; round "
            f"{rnd.number} cannot start"
        )
    state.round, state.events = rnd.number, []
    state.round_end_tree = len(state.trees) + state.trees_per_round
    try:
        _start_tree(s, run, rnd, state, recorder)
    except InsufficientSharesError as exc:
        _fail(rnd, state, str(exc))
    save(row, state)


def close(s: Session, run: Run, rnd: Round, recorder: Recorder) -> None:
    """The round's deadline passed: silos not answering the current stage drop out."""
    row = hist_row(s, run.id, for_update=True)
    if row is None:
        _fail(rnd, None, "no secure-hist session was started")
        return
    s.refresh(rnd)  # SQLite takes its lock at the state row: re-read the round after it
    if rnd.status != "open":
        return
    state = load(row)
    advance(s, run, rnd, state, recorder, force=True)
    save(row, state)


def _fail(rnd: Round, state: HistState | None, reason: str) -> None:
    rnd.status, rnd.closed_at = "failed", utcnow()
    s = object_session(rnd)
    # "too few silos advertised" says little without the silos' own reasons (a policy, ...)
    excused = sat_out_reasons(s, rnd.run_id, rnd.number) if s is not None else ""
    rnd.reason = f"secure-hist: {reason}" + (f"; sat out: {excused}" if excused else "")
    if state is not None:
        state.phase = "failed"


def _running(s: Session, run_id: str, number: int) -> set[str]:
    """Silos the session still waits for: active in the run, and not sitting this round out
    (a silo that declined round `number` is dropped at the stage it leaves unanswered)."""
    gone = s.scalars(
        select(Contribution.silo).where(Contribution.run_id == run_id, Contribution.round == number)
    )
    return set(active_silos(s, run_id)) - set(gone)


def awaited(s: Session, run: Run, rnd: Round, state: HistState) -> set[str]:
    """The silos the session's current stage waits for (what `_step` checks)."""
    if rnd.status != "open":
        return set()
    srv, running = state.server, _running(s, run.id, rnd.number)
    if state.phase == "advertise":
        return set(srv.config.silos) & running - set(srv.adverts)
    agg = srv.current
    if state.phase != "aggregate" or agg is None:
        return set()
    if agg.stage == "masked":
        return set(agg.active) & running - set(agg.masked)
    if agg.stage == "consistency":
        return set(agg.survivors) & running - set(agg.consistency)
    return set(agg.survivors) & running - set(agg.responses)


def advance(
    s: Session, run: Run, rnd: Round, state: HistState, recorder: Recorder, *, force: bool
) -> None:
    """Move the protocol on while nobody is awaited (or once, `force`d, at the deadline);
    fail the round when too few silos remain or a seed or key is bad."""
    while rnd.status == "open" and state.phase in ("advertise", "aggregate"):
        try:
            moved = _step(s, run, rnd, state, recorder, _running(s, run.id, rnd.number), force)
        except SecAggError as exc:  # too few answers, or a bad message: never a stuck round
            _fail(rnd, state, str(exc))
            return
        if not moved:
            return
        force = False  # a forced close moves one stage; later stages wait for their silos


def _step(
    s: Session,
    run: Run,
    rnd: Round,
    state: HistState,
    recorder: Recorder,
    running: set[str],
    force: bool,
) -> bool:
    """One stage transition; False while the stage still waits for running silos."""
    srv = state.server
    if state.phase == "advertise":
        if set(srv.config.silos) & running - set(srv.adverts) and not force:
            return False
        session_server.close_setup(srv)
        silent = sorted(set(srv.config.silos) - set(srv.active))
        _leave(s, run, rnd, state, silent, "sent no session keys by the deadline")
        state.phase, state.purpose = "aggregate", first_purpose(state.config)
        _open(s, run, rnd, state, recorder)
        return True
    agg = srv.current
    assert agg is not None
    if agg.stage == "masked":
        if set(agg.active) & running - set(agg.masked) and not force:
            return False
        _close_masked(s, run, rnd, state, recorder)
    elif agg.stage == "consistency":
        if set(agg.survivors) & running - set(agg.consistency) and not force:
            return False
        if len(agg.consistency) < srv.config.threshold:
            gone = tuple(sorted(set(agg.survivors) - set(agg.consistency)))
            _abandon(s, run, rnd, state, recorder, gone)
            return True
        session_server.unmask_requests(srv)
    else:
        quiet = tuple(sorted(set(agg.survivors) - set(agg.responses)))
        if set(quiet) & running and not force:
            return False
        try:
            total = _finalize(s, state)
        except InsufficientSharesError:
            _abandon(s, run, rnd, state, recorder, quiet)
            return True
        _on_sum(s, run, rnd, state, recorder, total)
    return True


def _close_masked(s: Session, run: Run, rnd: Round, state: HistState, recorder: Recorder) -> None:
    """End the masked stage; silos without a masked vector are dropouts and leave the run."""
    agg = state.server.current
    assert agg is not None
    session_server.close_masked(state.server)
    if not agg.dropped:
        return
    entry = {
        "round": rnd.number,
        "counter": agg.counter,
        "silos": list(agg.dropped),
        "where": _where(state),
    }
    recorder.service(s, "dropout", entry, run.id)
    state.events.append({"event": "dropout", **entry})
    why = "no masked vector by the deadline (recovered from the survivors)"
    _leave(s, run, rnd, state, list(agg.dropped), why)


def _where(state: HistState) -> str:
    req = pending_level(state)
    if req is None:
        return "setup"
    return f"tree {req.tree} depth {req.depth}"


def _leave(s: Session, run: Run, rnd: Round, state: HistState, silos: list[str], why: str) -> None:
    """Silos that left the session leave the run: later rounds do not wait for them."""
    for silo in silos:
        membership = s.get(RunSilo, (run.id, silo))
        if membership is None or membership.status != "active":
            continue
        membership.status = "refused"
        membership.reason = (
            f"left the secure-hist run in round {rnd.number} at {_where(state)}: {why}"
        )


def _abandon(
    s: Session, run: Run, rnd: Round, state: HistState, recorder: Recorder, silent: tuple[str, ...]
) -> None:
    """A survivor fell silent after the masked stage: run the aggregation again without it."""
    srv = state.server
    counter = srv.current.counter if srv.current else srv.counter
    session_server.abandon(srv, silent)
    entry = {"round": rnd.number, "counter": counter, "silos": list(silent), "abandoned": True}
    recorder.service(s, "dropout", {**entry, "where": _where(state)}, run.id)
    state.events.append({"event": "dropout", **entry, "where": _where(state)})
    _leave(s, run, rnd, state, list(silent), "silent after sending its masked vector")
    if state.purpose == "level":
        _restart_tree(s, run, rnd, state, recorder)
    else:
        _open(s, run, rnd, state, recorder)


def _start_tree(s: Session, run: Run, rnd: Round, state: HistState, recorder: Recorder) -> None:
    assert state.cuts is not None
    srv = state.server
    state.grower = start_tree(
        state.config, state.cuts, tree=len(state.trees), rows=state.rows, counter=srv.counter + 1
    )
    state.phase, state.purpose = "aggregate", "level"
    _open(s, run, rnd, state, recorder)


def _restart_tree(s: Session, run: Run, rnd: Round, state: HistState, recorder: Recorder) -> None:
    """Grow the current tree again from its root (its earlier levels held a silo that left)."""
    assert state.grower is not None
    state.events.append({"event": "tree_restart", "tree": state.grower.tree})
    _start_tree(s, run, rnd, state, recorder)


def _open(s: Session, run: Run, rnd: Round, state: HistState, recorder: Recorder) -> None:
    """Open the next aggregation over the session's silos still running in the run."""
    srv = state.server
    gone = tuple(x for x in srv.active if x not in _running(s, run.id, rnd.number))
    if gone:  # refused or sat out since: they leave the session before this aggregation
        session_server.abandon(srv, gone)
    if state.purpose == "rows":
        session_server.open_aggregation(srv, 1)
        return
    if state.purpose == "setup":
        session_server.open_aggregation(srv, state.config.setup_length())
        return
    grower = state.grower
    assert grower is not None and grower.request is not None
    if grower.request.depth > 0 and set(srv.active) != set(state.tree_silos):
        return _restart_tree(s, run, rnd, state, recorder)
    if grower.request.depth == 0:
        state.tree_silos = srv.active
    grower.request = _renumber(grower.request, srv.counter + 1)
    session_server.open_aggregation(srv, len(grower.request.compute) * grower.layout.block)


def _renumber(req: LevelRequest, counter: int) -> LevelRequest:
    return LevelRequest(req.tree, req.depth, counter, req.splits, req.compute)


def _finalize(s: Session, state: HistState) -> np.ndarray:
    """The survivors' sum: their stored masked vectors, then the session's unmasking."""
    srv = state.server
    agg = srv.current
    assert agg is not None
    rows = s.execute(
        select(HistMessage.silo, HistMessage.payload).where(
            HistMessage.run_id == srv.config.run_id,
            HistMessage.counter == agg.counter,
            HistMessage.stage == "masked",
        )
    )
    for silo, payload in rows:
        if silo in agg.survivors and payload is not None:
            np.add(agg.total, hist_wire.open_masked(state, payload, silo).vector, out=agg.total)
    total = hist_wire.exact_sum(state, session_server.finalize(srv))
    # the vectors served their purpose; their digests stay as the record
    s.execute(
        update(HistMessage)
        .where(
            HistMessage.run_id == srv.config.run_id,
            HistMessage.counter == agg.counter,
            HistMessage.stage == "masked",
        )
        .values(payload=None)
    )
    return total


def _on_sum(
    s: Session, run: Run, rnd: Round, state: HistState, recorder: Recorder, total: np.ndarray
) -> None:
    srv = state.server
    agg = srv.current
    assert agg is not None
    state.events.append(
        {"event": "sum", "counter": agg.counter, "what": _where(state), "silos": len(agg.survivors)}
    )
    if agg.dropped:
        entry = {
            "round": rnd.number,
            "counter": agg.counter,
            "recovered": list(agg.dropped),
            "survivors": list(agg.survivors),
        }
        recorder.service(s, "recovery", entry, run.id)
        state.events.append({"event": "recovery", **entry})
    if state.purpose == "rows":
        rows = int(total.view(np.int64)[0])
        if not 1 <= rows <= state.config.max_rows:
            _fail(rnd, state, f"the silos report {rows} training rows in all; the run allows "
                  f"1 to max_rows = {state.config.max_rows}")  # fmt: skip
            return
        state.rows, state.purpose = rows, "setup"
        _open(s, run, rnd, state, recorder)
        return
    if state.purpose == "setup":
        counted = state.rows
        cuts = cuts_from_setup(total, state.config)
        state.base_score, state.rows = base_score_from_setup(total, state.config)
        if counted and state.rows > counted:  # fewer is a silo that left in between
            _fail(rnd, state, f"the setup vectors report {state.rows} training rows, more than "
                  f"the {counted} the silos counted first")  # fmt: skip
            return
        state.cuts = cuts_from_json(cuts_to_json(cuts))  # exactly what the silos receive
        _start_tree(s, run, rnd, state, recorder)
        return
    grower = state.grower
    assert grower is not None and grower.request is not None
    if grower.request.depth > 0 and set(srv.active) != set(state.tree_silos):
        return _restart_tree(s, run, rnd, state, recorder)
    state.tree_silos = srv.active
    answer = receive_level(grower, total, srv.counter + 1)
    if isinstance(answer, LevelRequest):
        _open(s, run, rnd, state, recorder)
        return
    state.trees.append(grower.nodes)
    state.done.append(answer.to_json().decode())
    state.rows, state.grower, state.trees_dirty = grower.nodes[0].stats.rows, None, True
    if len(state.trees) < state.round_end_tree:
        _start_tree(s, run, rnd, state, recorder)
    else:
        finish_round(s, run, rnd, state, recorder)
