"""Replaying masked inputs (the service's mailbox) with and without their vectors."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aggregation.secagg import server
from schemas.secagg.config import RoundConfig
from schemas.secagg.crypto import generate_identity, identity_public_bytes
from schemas.secagg.exceptions import LateMessageError
from silos.secagg import client


def _round_up_to_masked() -> tuple[server.ServerState, dict, dict, RoundConfig]:  # type: ignore[type-arg]
    silos = ("a", "b", "c")
    ids = {s: generate_identity() for s in silos}
    keys = {s: identity_public_bytes(k) for s, k in ids.items()}
    cfg = RoundConfig("run", 1, silos, threshold=2, dim=64, consistency_check=False)
    srv = server.ServerState(cfg, keys)
    states = {}
    for s in silos:
        states[s], advert = client.advertise_keys(cfg, s, ids[s], keys)
        server.receive_advertise(srv, advert)
    adverts = server.close_advertise(srv)
    for s in silos:
        server.receive_shares(srv, client.share_keys(states[s], adverts))
    deliveries = server.close_shares(srv)
    inputs = {s: np.arange(64, dtype=np.uint32) * (i + 1) for i, s in enumerate(silos)}
    masked = {s: client.masked_input(states[s], deliveries[s], inputs[s]) for s in silos}
    return srv, states, masked, cfg


def _finish(srv: server.ServerState, states: dict) -> np.ndarray:  # type: ignore[type-arg]
    server.close_masked(srv)
    requests = server.unmask_requests(srv)
    for s in srv.survivors:
        server.receive_unmask(srv, client.unmask(states[s], requests[s]))
    return server.finalize(srv)


def test_replay_with_vectors_sums_and_without_refuses_to_finalize():
    srv, states, masked, _ = _round_up_to_masked()
    with_vectors = server.ServerState(srv.config, srv.roster_keys, stage=srv.stage)
    with_vectors.adverts, with_vectors.shares = srv.adverts, srv.shares
    with_vectors.total = np.zeros_like(srv.total)
    senders_only = server.ServerState(srv.config, srv.roster_keys, stage=srv.stage)
    senders_only.adverts, senders_only.shares = srv.adverts, srv.shares
    senders_only.total = np.zeros_like(srv.total)
    for s, msg in masked.items():
        server.receive_masked(srv, msg)
        server.replay_masked(with_vectors, s, msg.vector)
        server.replay_masked(senders_only, s, None)
    with pytest.raises(LateMessageError, match="out of order"):
        server.replay_masked(senders_only, "a", None)  # a second input from one silo

    expected = np.arange(64, dtype=np.uint32) * 6  # 1 + 2 + 3 times the same vector
    assert np.array_equal(_finish(srv, states), expected)
    assert np.array_equal(_finish(with_vectors, states), expected)
    with pytest.raises(LateMessageError, match="without their vectors"):
        _finish(senders_only, states)


@settings(max_examples=200, deadline=None)
@given(
    n=st.integers(min_value=2, max_value=9),
    steps=st.lists(
        st.tuples(st.sampled_from(["share", "survivors", "new shares"]), st.integers(0, 2**16)),
        max_size=25,
    ),
)
def test_kept_survivor_and_dropped_sets_follow_every_change(n: int, steps: list) -> None:  # type: ignore[type-arg]
    """`dropped` and the unmask check's sets are kept between calls; whatever changes the
    survivor list or the shares (a new share message, a new survivor list, a replaced shares
    mapping), they equal the sets computed afresh."""
    silos = tuple(f"s{i}" for i in range(n))
    cfg = RoundConfig("run", 1, silos, threshold=2, dim=4, consistency_check=False)
    srv = server.ServerState(cfg, {})
    for kind, pick in steps:
        chosen = tuple(s for i, s in enumerate(silos) if pick >> i & 1)
        if kind == "share":
            srv.shares[silos[pick % n]] = None  # type: ignore[assignment]  # only keys matter
        elif kind == "survivors":
            srv.survivors = tuple(sorted(chosen))
        else:
            srv.shares = dict.fromkeys(chosen)  # type: ignore[arg-type]
        survivors, dropped, ordered = srv._unmask_sets()
        fresh = tuple(s for s in sorted(srv.shares) if s not in set(srv.survivors))
        assert srv.dropped == ordered == fresh
        assert survivors == frozenset(srv.survivors) and dropped == frozenset(fresh)
