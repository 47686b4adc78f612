"""The wire widths of the open secure-hist aggregation, and its masked vectors read off the wire.

Both sides derive the widths from what they already share (`schemas.secure_hist.packing`):
64 bits for the first aggregation's row count, the run's config and that count for the setup
vector, the pending level's nodes and their federation-wide rows for a level. The service
reads each silo's packed frame back to the reduced vector the silo signed, and reads the
unmasked sum back to the exact (sign-extended) integers.
"""

from __future__ import annotations

import numpy as np

from aggregation.service.hist_state import HistState, pending_level
from schemas.secagg.session_messages import SessionMasked
from schemas.secure_hist import packing
from schemas.secure_hist.packing import Widths


def widths(state: HistState) -> Widths:
    """Wire widths of the vector the open aggregation sums (rows, setup or a level)."""
    if state.purpose == "rows":
        return packing.full(1)
    level = pending_level(state)
    if level is None:
        return packing.setup_widths(state.config, state.rows or None)
    assert state.grower is not None
    rows = [c.rows for c in level.compute]
    return packing.level_widths(state.config, state.grower.layout.total, rows)


def open_masked(state: HistState, raw: bytes, silo: str | None = None) -> SessionMasked:
    """A stored or arriving masked message with its reduced vector rebuilt."""
    return packing.open_masked(raw, widths(state), {"silo": silo})


def exact_sum(state: HistState, total: np.ndarray) -> np.ndarray:
    """The unmasked sum mod 2^64 of reduced vectors as the exact sum's ``<u8`` two's complement."""
    return packing.widen(total, widths(state))
