"""Secure-histogram boosting for K silos in one process: the real silo code, the real session
client and server halves, every message through its byte format (no HTTP, no database).

Tests and `bench/secure_hist.py` use it; the service maps each exchange to an endpoint (see the
README). A silo listed in `drop_at` vanishes at that (tree, depth): it sends no masked vector
there, its pairwise masks are recovered from the survivors, and it leaves the run. Histograms
summed earlier in that tree include its rows, so the tree is grown again from its root by the
remaining silos; a drop at the root level needs no restart.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TypeVar

import numpy as np

from aggregation.secagg import session_server
from aggregation.trees.secure_hist.cuts import base_score_from_setup, cuts_from_setup
from aggregation.trees.secure_hist.export import export_xgb
from aggregation.trees.secure_hist.grow import Node, receive_level, start_tree
from schemas.secagg.crypto import generate_identity, identity_public_bytes
from schemas.secagg.exceptions import InsufficientSharesError
from schemas.secagg.messages import Message
from schemas.secagg.session_config import SessionConfig
from schemas.secure_hist import packing
from schemas.secure_hist.errors import SiloDroppedError
from schemas.secure_hist.protocol import (
    HistRunConfig,
    LevelRequest,
    TreeDone,
    cuts_from_json,
    cuts_to_json,
    to_modular,
)
from silos import hist_trainer
from silos.hist_trainer import HistSilo
from silos.secagg import session

M = TypeVar("M", bound=Message)
T = TypeVar("T")


@dataclass
class DriverReport:
    """What a run produced and cost."""

    model: bytes
    base_score: float | list[float]  # K base margins for multi:softprob
    cuts: list[np.ndarray]
    trees: list[list[Node]]
    left: list[str]
    aggregations: int
    bytes_sent: dict[str, int] = field(default_factory=dict)
    bytes_received: dict[str, int] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)


@dataclass
class _Run:
    config: HistRunConfig
    server: session_server.SessionServer
    clients: dict[str, session.SessionClient]
    silos: dict[str, HistSilo]
    drop_at: dict[str, tuple[int, int]]
    sent: defaultdict[str, int] = field(default_factory=lambda: defaultdict(int))
    received: defaultdict[str, int] = field(default_factory=lambda: defaultdict(int))
    seconds: defaultdict[str, float] = field(default_factory=lambda: defaultdict(float))

    def wire(self, msg: M) -> M:  # what the relay stores and hands back
        raw = msg.to_bytes()
        self.sent[msg.silo] += len(raw)
        return type(msg).from_bytes(raw)

    def timed(self, who: str, fn: Callable[..., T], *args: object) -> T:
        start = time.perf_counter()
        out = fn(*args)
        self.seconds[who] += time.perf_counter() - start
        return out


def secure_sum(
    run: _Run,
    vectors: Callable[[str], np.ndarray],
    dim: int,
    vanish: set[str],
    widths: packing.Widths | None = None,
) -> np.ndarray:
    """One session aggregation over the active silos; silos in `vanish` send nothing. Masked
    vectors travel at `widths` (`schemas.secure_hist.packing`; 64 bits each when None)."""
    widths = widths or packing.full(dim)
    srv = run.server
    request = run.timed("service", session_server.open_aggregation, srv, dim)
    raw = request.to_bytes()
    for silo in request.active:
        run.received[silo] += len(raw)
        if silo in vanish:
            continue
        x = run.timed(silo, packing.fit, run.timed(silo, vectors, silo), widths, {"silo": silo})
        masked = run.timed(silo, session.masked_input, run.clients[silo], request, x)
        raw = run.timed(silo, packing.seal_masked, masked, widths, run.clients[silo].identity)
        run.sent[silo] += len(raw)
        msg = run.timed("service", packing.open_masked, raw, widths)
        run.timed("service", session_server.receive_masked, srv, msg)
    survivors = run.timed("service", session_server.close_masked, srv)
    if srv.config.consistency_check:
        for silo in survivors:
            signed = run.timed(
                silo, session.sign_survivors, run.clients[silo], srv.counter, survivors
            )
            run.timed("service", session_server.receive_consistency, srv, run.wire(signed))
    requests = run.timed("service", session_server.unmask_requests, srv)
    for silo, req in requests.items():
        run.received[silo] += len(req.to_bytes())
        answer = run.timed(silo, session.unmask, run.clients[silo], req)
        run.timed("service", session_server.receive_unmask, srv, run.wire(answer))
    total = run.timed("service", session_server.finalize, srv)
    return packing.widen(total, widths)


def _setup(
    config: HistRunConfig,
    data: Mapping[str, tuple[np.ndarray, np.ndarray]],
    threshold: int,
    consistency_check: bool,
    policies: Mapping[str, int],
    drop_at: Mapping[str, tuple[int, int]],
) -> _Run:
    identities = {s: generate_identity() for s in data}
    roster = {s: identity_public_bytes(k) for s, k in identities.items()}
    scfg = SessionConfig("secure-hist", tuple(data), threshold, 64, consistency_check)
    run = _Run(config, session_server.SessionServer(scfg, roster), {}, {}, dict(drop_at))
    for name, (X, y) in data.items():
        run.silos[name] = HistSilo.create(name, X, y, config, policies.get(name, 1))
        client, advert = session.start_session(scfg, name, identities[name], roster)
        run.clients[name] = client
        session_server.receive_advert(run.server, run.wire(advert))
    adverts = session_server.close_setup(run.server)
    for name, client in run.clients.items():
        run.received[name] += sum(len(a.to_bytes()) for a in adverts)
        run.timed(name, session.accept_adverts, client, adverts)
    return run


def _vanishing(run: _Run, tree: int, depth: int) -> set[str]:
    return {s for s, at in run.drop_at.items() if at == (tree, depth) and s in run.server.active}


def _grow_tree(run: _Run, tree: int, cuts: list[np.ndarray], rows: int) -> tuple[list[Node], int]:
    """Grow one tree; restart it from the root if a silo leaves below the root level."""
    restart = False
    while True:
        for name in run.server.active:
            run.timed(name, hist_trainer.start_tree, run.silos[name], tree, restart)
        grower = start_tree(run.config, cuts, tree=tree, rows=rows, counter=run.server.counter + 1)
        assert grower.request is not None
        answer: LevelRequest | TreeDone = grower.request
        before = set(run.server.active)
        while isinstance(answer, LevelRequest):
            request, wire = answer, answer.to_json()
            vanish = _vanishing(run, tree, request.depth)

            def vector(silo: str, wire: bytes = wire) -> np.ndarray:
                run.received[silo] += len(wire)
                return hist_trainer.level_vector(run.silos[silo], LevelRequest.from_json(wire))

            dim = len(request.compute) * grower.layout.block
            node_rows = [c.rows for c in request.compute]
            widths = packing.level_widths(run.config, grower.layout.total, node_rows)
            total = secure_sum(run, vector, dim, vanish, widths)
            if set(run.server.active) != before and request.depth > 0:
                break  # a silo left mid-tree: grow this tree again without it
            answer = run.timed("service", receive_level, grower, total, run.server.counter + 1)
        if isinstance(answer, TreeDone):
            wire = answer.to_json()
            for name in run.server.active:
                run.received[name] += len(wire)
                run.timed(name, hist_trainer.finish_tree, run.silos[name], TreeDone.from_json(wire))
            return grower.nodes, grower.nodes[0].stats.rows
        restart = True


def run_secure_hist(
    config: HistRunConfig,
    data: Mapping[str, tuple[np.ndarray, np.ndarray]],
    *,
    threshold: int | None = None,
    consistency_check: bool = True,
    policies: Mapping[str, int] | None = None,
    drop_at: Mapping[str, tuple[int, int]] | None = None,
    feature_names: tuple[str, ...] = (),
) -> DriverReport:
    """Train `config.n_trees` trees over the silos' (X, y) with secure histograms.

    Parameters
    ----------
    threshold
        Shamir threshold t (default floor(2n/3) + 1, at least 2).
    policies
        Silo -> its policy's minimum rows per node.
    drop_at
        Silo -> (tree, depth) at which it vanishes; (-1, 0) = during the setup aggregation.

    Raises
    ------
    SiloDroppedError
        Fewer than t silos remain.
    """
    n = len(data)
    t = threshold if threshold is not None else max(2, 2 * n // 3 + 1)
    started = time.perf_counter()
    run = _setup(config, data, t, consistency_check, policies or {}, drop_at or {})
    try:
        counted = None
        if config.packed:  # the service's first aggregation: the rows, bounding the setup's
            counted = int(secure_sum(
                run, lambda s: to_modular(np.array([float(len(run.silos[s].y))])), 1, set(),
            ).view(np.int64)[0])  # fmt: skip
        setup = secure_sum(
            run, lambda s: hist_trainer.setup_vector(run.silos[s]), config.setup_length(),
            _vanishing(run, -1, 0), packing.setup_widths(config, counted),
        )  # fmt: skip
        cuts = cuts_from_json(cuts_to_json(cuts_from_setup(setup, config)))
        base_score, rows = base_score_from_setup(setup, config)
        for name in run.server.active:
            run.timed(name, hist_trainer.start_training, run.silos[name], cuts, base_score)
        trees = []
        for t_index in range(config.n_trees):
            nodes, rows = _grow_tree(run, t_index, cuts, rows)
            trees.append(nodes)
    except InsufficientSharesError as exc:
        raise SiloDroppedError(f"too few silos remain: {exc}") from exc
    model = export_xgb(trees, config, base_score, feature_names)
    run.seconds["wall"] = time.perf_counter() - started
    return DriverReport(
        model, base_score, cuts, trees, list(run.server.gone), run.server.counter,
        dict(run.sent), dict(run.received), dict(run.seconds),
    )  # fmt: skip
