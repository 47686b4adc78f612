"""A secure-histogram run's state in the database: plain JSON plus safetensors, never pickle.

`HistState` is what `hist_rounds` works on: the run's `HistRunConfig`, the service's half of
the secure-aggregation session (`SessionServer`), the tree being grown (`TreeGrower`) and the
finished trees. `load` rebuilds it from a `HistRun` row, `save` writes it back in the same
transaction, so every service process sharing the database sees one state and a restarted
service continues where the last one stopped.

What is *not* stored here: the masked vectors (they are in the `hist_messages` mailbox and
summed only when their aggregation is unmasked; a stored `SessionMasked` keeps its header,
commitment and share ciphertexts with an empty vector), and nothing secret (the service holds
no key of the session).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from aggregation.secagg import session_server
from aggregation.service.tables import HistRun, utcnow
from aggregation.trees.secure_hist.grow import Node, TreeGrower
from aggregation.trees.secure_hist.splits import SplitChoice, Stats
from schemas import tensors
from schemas.secagg.session_config import SessionConfig
from schemas.secagg.session_messages import (
    SessionAdvert,
    SessionMasked,
    SessionUnmaskResponse,
)
from schemas.secure_hist.protocol import (
    HistLayout,
    HistRunConfig,
    LevelRequest,
    cuts_from_json,
    cuts_to_json,
)

EMPTY = np.zeros(0, dtype="<u8")


@dataclass
class HistState:
    """Everything the service knows about one secure-hist run (see module docstring).

    phase: ``advertise`` (session setup) -> ``aggregate`` (an aggregation is open; `purpose`
    says whether it sums the silos' row counts, the setup vector or a tree level) ->
    ``between`` (the round's trees are done) -> ``aggregate`` (next round) ...; ``failed``
    when too few silos remain.
    """

    config: HistRunConfig
    server: session_server.SessionServer
    trees_per_round: int
    phase: str = "advertise"
    purpose: str = "setup"
    round: int = 0
    round_end_tree: int = 0
    rows: int = 0
    base_score: float | list[float] | None = None  # K base margins for multi:softprob
    cuts: list[np.ndarray] | None = None
    grower: TreeGrower | None = None
    tree_silos: tuple[str, ...] = ()
    trees: list[list[Node]] = field(default_factory=list)
    done: list[str] = field(default_factory=list)  # TreeDone JSON of every finished tree
    events: list[dict[str, Any]] = field(default_factory=list)  # of the current round
    trees_dirty: bool = False


def pending_level(state: HistState) -> LevelRequest | None:
    """The tree level the open aggregation sums, or None while it sums the silos' rows or
    the setup vector (or no tree is being grown)."""
    if state.purpose in ("rows", "setup") or state.grower is None:
        return None
    return state.grower.request


def first_purpose(config: HistRunConfig) -> str:
    """The session's first aggregation: the federation's row count when the wire is packed
    (it bounds the setup vector's counts), else the setup vector itself."""
    return "rows" if config.packed else "setup"


def config_json(
    config: HistRunConfig,
    session: SessionConfig,
    roster_keys: dict[str, bytes],
    trees_per_round: int,
) -> str:
    return json.dumps(
        {
            "hist": config.to_dict(),
            "session": {
                "run_id": session.run_id,
                "silos": list(session.silos),
                "threshold": session.threshold,
                "bits": session.bits,
                "consistency_check": session.consistency_check,
            },
            "roster_keys": {k: v.hex() for k, v in roster_keys.items()},
            "trees_per_round": trees_per_round,
        }
    )


def _server_dict(srv: session_server.SessionServer) -> dict[str, Any]:
    cur = srv.current
    current = None
    if cur is not None:
        current = {
            "counter": cur.counter,
            "dim": cur.dim,
            "active": list(cur.active),
            "stage": cur.stage,
            # the vector was added to the sum when it arrived; the mailbox row keeps it
            "masked": {s: replace(m, vector=EMPTY).to_bytes().hex() for s, m in cur.masked.items()},
            "survivors": list(cur.survivors),
            "consistency": {s: sig.hex() for s, sig in cur.consistency.items()},
            "responses": {s: m.to_bytes().hex() for s, m in cur.responses.items()},
        }
    return {
        "adverts": {s: m.to_bytes().hex() for s, m in srv.adverts.items()},
        "active": list(srv.active),
        "gone": list(srv.gone),
        "counter": srv.counter,
        "current": current,
    }


def _server(cfg: dict[str, Any], data: dict[str, Any]) -> session_server.SessionServer:
    sc = cfg["session"]
    config = SessionConfig(
        sc["run_id"], tuple(sc["silos"]), sc["threshold"], sc["bits"], sc["consistency_check"]
    )
    keys = {k: bytes.fromhex(v) for k, v in cfg["roster_keys"].items()}
    # every stored message was signature-checked when it arrived
    srv = session_server.SessionServer(config, keys)
    srv.adverts = {
        s: SessionAdvert.from_bytes(bytes.fromhex(h)) for s, h in data["adverts"].items()
    }
    srv.active, srv.gone, srv.counter = tuple(data["active"]), list(data["gone"]), data["counter"]
    cur = data["current"]
    if cur is not None:
        agg = session_server._Aggregation(
            cur["counter"],
            cur["dim"],
            tuple(cur["active"]),
            np.zeros(cur["dim"], dtype="<u8"),  # summed from the mailbox to finalize
            cur["stage"],
        )
        agg.masked = {
            s: SessionMasked.from_bytes(bytes.fromhex(h)) for s, h in cur["masked"].items()
        }
        agg.survivors = tuple(cur["survivors"])
        agg.consistency = {s: bytes.fromhex(h) for s, h in cur["consistency"].items()}
        agg.responses = {
            s: SessionUnmaskResponse.from_bytes(bytes.fromhex(h))
            for s, h in cur["responses"].items()
        }
        srv.current = agg
    return srv


def _stats(s: Stats) -> list[int]:
    return [int(s.g), int(s.h), int(s.rows)]


def _node_dict(n: Node) -> dict[str, Any]:
    split = None
    if n.split is not None:
        c = n.split
        split = {
            "feature": c.feature,
            "bin": c.bin,
            "default_left": c.default_left,
            "loss_chg": float(c.loss_chg),
            "left": _stats(c.left),
            "right": _stats(c.right),
        }
    return {
        "id": n.id,
        "parent": n.parent,
        "depth": n.depth,
        "stats": _stats(n.stats),
        "split": split,
        "left": n.left,
        "right": n.right,
        "threshold": float(n.threshold),
        "value": float(n.value),
    }


def _node(d: dict[str, Any]) -> Node:
    split = None
    if d["split"] is not None:
        c = d["split"]
        split = SplitChoice(
            c["feature"],
            c["bin"],
            c["default_left"],
            c["loss_chg"],
            Stats(*c["left"]),
            Stats(*c["right"]),
        )
    return Node(
        d["id"],
        d["parent"],
        d["depth"],
        Stats(*d["stats"]),
        split,
        d["left"],
        d["right"],
        d["threshold"],
        d["value"],
    )


def _grower_dict(g: TreeGrower) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    meta = {
        "tree": g.tree,
        "nodes": [_node_dict(n) for n in g.nodes],
        "request": g.request.to_json().decode() if g.request is not None else None,
        "derive": sorted(g.derive),
    }
    return meta, {f"node{k}": np.ascontiguousarray(v, dtype=np.int64) for k, v in g.hists.items()}


def _grower(
    d: dict[str, Any], arrays: dict[str, np.ndarray], config: HistRunConfig, cuts: list[np.ndarray]
) -> TreeGrower:
    g = TreeGrower(config, cuts, HistLayout.from_cuts(cuts), d["tree"])
    g.nodes = [_node(n) for n in d["nodes"]]
    g.request = LevelRequest.from_json(d["request"].encode()) if d["request"] else None
    g.derive = set(d["derive"])
    g.hists = {int(k.removeprefix("node")): v.copy() for k, v in arrays.items()}
    return g


def load(row: HistRun, *, light: bool = False) -> HistState:
    """The run's state from its row (JSON and safetensors only). `light` skips what a task
    poll never needs: the finished trees and the level histograms."""
    cfg = json.loads(row.config_json)
    data = json.loads(row.state_json)
    config = HistRunConfig.from_dict(cfg["hist"])
    cuts = cuts_from_json(row.cuts_json.encode()) if row.cuts_json else None
    trees = json.loads(row.trees_json) if not light else {"trees": [], "done": []}
    state = HistState(
        config=config,
        server=_server(cfg, data["server"]),
        trees_per_round=cfg["trees_per_round"],
        phase=row.phase,
        purpose=data["purpose"],
        round=row.round,
        round_end_tree=data["round_end_tree"],
        rows=data["rows"],
        base_score=data["base_score"],
        cuts=cuts,
        tree_silos=tuple(data["tree_silos"]),
        trees=[[_node(n) for n in t] for t in trees["trees"]],
        done=list(trees["done"]),
        events=list(data["events"]),
    )
    if data["grower"] is not None:
        assert cuts is not None
        arrays = tensors.decode(row.arrays)[0] if row.arrays and not light else {}
        state.grower = _grower(data["grower"], arrays, config, cuts)
    return state


def save(row: HistRun, state: HistState) -> None:
    """Write the state back into its row (the caller's transaction commits it)."""
    grower, arrays = (None, None)
    if state.grower is not None:
        grower, hists = _grower_dict(state.grower)
        arrays = tensors.encode(hists) if hists else None
    row.phase = state.phase
    row.round = state.round
    row.state_json = json.dumps(
        {
            "server": _server_dict(state.server),
            "purpose": state.purpose,
            "round_end_tree": state.round_end_tree,
            "rows": state.rows,
            "base_score": state.base_score,
            "tree_silos": list(state.tree_silos),
            "grower": grower,
            "events": state.events,
        }
    )
    row.arrays = arrays
    if state.cuts is not None and row.cuts_json is None:
        row.cuts_json = cuts_to_json(state.cuts).decode()
    if state.trees_dirty or not row.trees_json:
        row.trees_json = json.dumps(
            {"trees": [[_node_dict(n) for n in t] for t in state.trees], "done": state.done}
        )
        state.trees_dirty = False


def hist_row(s: Session, run_id: str, *, for_update: bool = False) -> HistRun | None:
    """The run's state row; `for_update` locks it for the rest of the transaction.

    The lock starts with a write: SQLite (pysqlite) opens a transaction only at the first
    write, so SELECT ... FOR UPDATE alone would let two requests read the same state and the
    later one overwrite the earlier's message. The write takes SQLite's database write lock
    (PostgreSQL: the row lock) before the state is read."""
    stmt = select(HistRun).where(HistRun.run_id == run_id)
    if for_update:
        s.execute(update(HistRun).where(HistRun.run_id == run_id).values(updated_at=utcnow()))
        stmt = stmt.with_for_update().execution_options(populate_existing=True)
    return s.scalar(stmt)
