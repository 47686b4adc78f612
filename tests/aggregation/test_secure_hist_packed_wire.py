"""Packed masked vectors through the real secure-aggregation session halves: a silo dropping
out is recovered mod 2^b exactly, and a frame altered on the way fails the silo's signature."""

from __future__ import annotations

import numpy as np
import pytest
from support.secagg_session import open_session

from aggregation.secagg import session_server
from schemas.secagg.exceptions import SecAggError
from schemas.secagg.session_config import SessionConfig
from schemas.secure_hist import packing
from schemas.secure_hist.protocol import STATS, HistRunConfig, to_modular
from schemas.tree_params import XGBoostParams
from silos.secagg import session

SILOS = ("a", "b", "c", "d")
CONFIG = HistRunConfig(
    "binary:logistic", XGBoostParams(max_depth=3, max_bin=8), 1, ((0.0, 1.0),) * 2, fine_cells=16
)
TOTAL = 2 * 10  # slots per statistic of two features with 9 bins + missing


def _session() -> tuple[session_server.SessionServer, dict[str, session.SessionClient]]:
    return open_session(SessionConfig("packed", SILOS, 3, 64, True))


def _node_vectors(rng: np.random.Generator, rows: dict[str, int]) -> dict[str, np.ndarray]:
    """Each silo's [g | h | counts] block at the codec's extremes (|g| = B, h = h_max)."""
    qg, qh = packing.row_bounds(CONFIG)
    out = {}
    for silo, n in rows.items():
        slot = rng.integers(0, TOTAL, size=n)
        counts = np.bincount(slot, minlength=TOTAL).astype(np.float64)
        g = np.bincount(slot, weights=rng.choice([-qg, qg], size=n), minlength=TOTAL)
        out[silo] = to_modular(np.concatenate([g, counts * qh, counts]))
    return out


def test_a_dropped_silo_is_recovered_exactly_at_packed_widths() -> None:
    srv, clients = _session()
    rng = np.random.default_rng(3)
    rows = {"a": 400, "b": 250, "c": 1, "d": 349}
    vectors = _node_vectors(rng, rows)
    widths = packing.level_widths(CONFIG, TOTAL, [sum(rows.values())])
    assert widths.size == STATS * TOTAL
    request = session_server.open_aggregation(srv, widths.size)
    sent = {}
    for silo in SILOS:  # every silo masks (pairwise masks with everyone) ...
        x = packing.fit(vectors[silo], widths, {"silo": silo})
        masked = session.masked_input(clients[silo], request, x)
        sent[silo] = packing.seal_masked(masked, widths, clients[silo].identity)
        assert len(sent[silo]) < len(masked.to_bytes())
    assert widths.packed_bytes * 2 < 8 * widths.size  # under half the 64-bit payload
    for silo in ("a", "b", "d"):  # ... but c's vector never arrives
        session_server.receive_masked(srv, packing.open_masked(sent[silo], widths))
    survivors = session_server.close_masked(srv)
    for silo in survivors:
        signed = session.sign_survivors(clients[silo], srv.counter, survivors)
        session_server.receive_consistency(srv, signed)
    for silo, req in session_server.unmask_requests(srv).items():
        session_server.receive_unmask(srv, session.unmask(clients[silo], req))
    total = packing.widen(session_server.finalize(srv), widths).view(np.int64)
    plain = np.sum([vectors[s].view(np.int64) for s in ("a", "b", "d")], axis=0)
    assert total.tolist() == plain.tolist()
    assert total[:TOTAL].min() < 0 < total[:TOTAL].max()  # signed gradients came back


def test_a_frame_altered_on_the_way_is_refused_by_the_signature() -> None:
    srv, clients = _session()
    vectors = _node_vectors(np.random.default_rng(4), {s: 100 for s in SILOS})
    widths = packing.level_widths(CONFIG, TOTAL, [400])
    request = session_server.open_aggregation(srv, widths.size)
    x = packing.fit(vectors["a"], widths)
    raw = bytearray(packing.seal_masked(session.masked_input(clients["a"], request, x), widths,
                                        clients["a"].identity))  # fmt: skip
    raw[-3] ^= 0x10  # one bit of one masked entry
    with pytest.raises(SecAggError, match="signature"):
        session_server.receive_masked(srv, packing.open_masked(bytes(raw), widths))
    assert srv.current is not None and "a" not in srv.current.masked
    untouched = packing.seal_masked(session.masked_input(clients["b"], request, x), widths,
                                    clients["b"].identity)  # fmt: skip
    session_server.receive_masked(srv, packing.open_masked(untouched, widths))
    assert set(srv.current.masked) == {"b"}
