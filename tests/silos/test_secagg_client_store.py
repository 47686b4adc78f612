"""A silo agent that restarts mid-round resumes from its saved state."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from aggregation.secagg import server
from schemas.secagg.config import RoundConfig
from schemas.secagg.crypto import generate_identity, identity_public_bytes
from schemas.secagg.exceptions import MessageFormatError, UnmaskRefusedError
from silos.secagg import client
from silos.secagg.client_store import dump_state, load_state

SILOS = ("a", "b", "c", "d")


def test_restarted_silos_complete_the_round_exactly():
    ids = {s: generate_identity() for s in SILOS}
    roster = {s: identity_public_bytes(k) for s, k in ids.items()}
    cfg = RoundConfig("run-s", 5, SILOS, 3, 100)
    srv = server.ServerState(cfg, roster)
    states = {}
    for s in SILOS:
        states[s], advert = client.advertise_keys(cfg, s, ids[s], roster)
        server.receive_advertise(srv, advert)
    adverts = server.close_advertise(srv)
    for s in SILOS:
        server.receive_shares(srv, client.share_keys(states[s], adverts))
    deliveries = server.close_shares(srv)

    def restart(s):  # every silo restarts between every pair of stages
        states[s] = load_state(dump_state(states[s]), ids[s])

    inputs = {s: np.full(100, i + 1, "<u4") for i, s in enumerate(SILOS)}
    for s in SILOS[:3]:  # d drops after sharing keys
        restart(s)
        server.receive_masked(srv, client.masked_input(states[s], deliveries[s], inputs[s]))
    survivors = server.close_masked(srv)
    for s in survivors:
        restart(s)
        server.receive_consistency(srv, client.sign_survivors(states[s], survivors))
    requests = server.unmask_requests(srv)
    for s in survivors:
        restart(s)
        server.receive_unmask(srv, client.unmask(states[s], requests[s]))
    assert np.array_equal(server.finalize(srv), np.full(100, 1 + 2 + 3, "<u4"))

    restart("a")  # what was revealed survives the restart: no conflicting second answer
    flipped = dataclasses.replace(requests["a"], survivors=("a", "c", "d"), dropped=("b",))
    with pytest.raises(UnmaskRefusedError):
        client.unmask(states["a"], flipped)


def test_garbage_state_is_rejected():
    with pytest.raises(MessageFormatError):
        load_state(b'{"format": "other"}', generate_identity())
