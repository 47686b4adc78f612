"""Secure-aggregation sessions: masks cancel over many counters, counters separate the masks,
dropped silos are recovered and leave, refusals protect individual vectors."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from support.secagg_session import open_session

from aggregation.secagg import session_server
from schemas.secagg.crypto import generate_identity, identity_public_bytes
from schemas.secagg.exceptions import (
    MessageFormatError,
    UnknownSiloError,
    UnmaskRefusedError,
    VectorShapeError,
    WrongRoundError,
)
from schemas.secagg.prg import add_mask
from schemas.secagg.session_messages import SessionAdvert, SessionMasked, SessionUnmaskResponse
from silos.secagg import session


def setup(n: int, t: int, consistency: bool = True):
    silos = tuple(f"s{i}" for i in range(n))
    return open_session(session.SessionConfig("run-1", silos, t, 64, consistency))


def aggregate(srv, clients, xs, vanish=frozenset()):
    request = session_server.open_aggregation(srv, len(next(iter(xs.values()))))
    masked = {}
    for s in request.active:
        if s not in vanish:
            masked[s] = session.masked_input(clients[s], request, xs[s])
            session_server.receive_masked(srv, SessionMasked.from_bytes(masked[s].to_bytes()))
    survivors = session_server.close_masked(srv)
    if srv.config.consistency_check:
        for s in survivors:
            sig = session.sign_survivors(clients[s], request.round_num, survivors)
            session_server.receive_consistency(srv, sig)
    for s, req in session_server.unmask_requests(srv).items():
        session_server.receive_unmask(srv, session.unmask(clients[s], req))
    return session_server.finalize(srv), masked


@settings(max_examples=15, deadline=None)
@given(
    n=st.integers(3, 6),
    dim=st.integers(1, 300),
    rounds=st.integers(1, 3),
    drop=st.booleans(),
    seed=st.integers(0, 2**32 - 1),
)
def test_masks_cancel_over_many_aggregations(n, dim, rounds, drop, seed) -> None:
    rng = np.random.default_rng(seed)
    srv, clients = setup(n, max(2, n // 2 + 1))
    gone: set[str] = set()
    for r in range(rounds):
        xs = {s: rng.integers(0, 2**64, dim, dtype=np.uint64) for s in srv.active}
        vanish = {srv.active[-1]} if drop and r == rounds - 1 else set()
        total, _ = aggregate(srv, clients, xs, vanish)
        expected = np.zeros(dim, dtype=np.uint64)
        for s, x in xs.items():
            if s not in vanish:
                expected += x
        np.testing.assert_array_equal(total, expected)
        gone |= vanish
    assert set(srv.gone) == gone and not gone & set(srv.active)


def test_counter_separates_masks() -> None:
    srv, clients = setup(3, 2)
    xs = {s: np.zeros(64, dtype=np.uint64) for s in srv.active}
    _, first = aggregate(srv, clients, xs)
    _, second = aggregate(srv, clients, xs)
    for s in first:  # the same zero vector never looks the same twice
        assert not np.array_equal(first[s].vector, second[s].vector)
    a, b = clients["s0"].pair_seeds["s1"], clients["s1"].pair_seeds["s0"]
    assert a == b
    seeds = {session.pair_counter_seed(a, "run-1", c, "s0", "s1") for c in range(1, 50)}
    assert len(seeds) == 49
    assert session.pair_counter_seed(a, "run-2", 1, "s0", "s1") not in seeds


def test_dropped_silo_leaves_and_earlier_vectors_stay_masked() -> None:
    srv, clients = setup(4, 3)
    xs = {s: np.arange(16, dtype=np.uint64) + i for i, s in enumerate(srv.active)}
    _, first = aggregate(srv, clients, xs)
    total, _ = aggregate(srv, clients, xs, vanish={"s3"})
    assert srv.gone == ["s3"] and "s3" not in srv.active
    np.testing.assert_array_equal(total, sum(xs[s] for s in ("s0", "s1", "s2")))
    # what the service learned about s3 (its pairwise seeds of counter 2) does not unmask
    # s3's vector of counter 1
    seeds = srv.current.responses  # counter-2 answers: pairwise seeds with s3
    y = first["s3"].vector.copy()
    for answer in seeds.values():
        add_mask(y, answer.pair_seeds["s3"], +1)  # every peer sorts before s3
    assert not np.array_equal(y, xs["s3"])
    # a silo that left is never re-admitted by its peers
    request = session_server.open_aggregation(srv, 16)
    forged = type(request)(request.run_id, request.round_num, "service", ("s0", "s1", "s3"), 16)
    with pytest.raises(UnknownSiloError):
        session.masked_input(clients["s0"], forged, xs["s0"])


def test_refusals() -> None:
    srv, clients = setup(3, 2, consistency=False)
    request = session_server.open_aggregation(srv, 8)
    good = np.zeros(8, dtype=np.uint64)
    with pytest.raises(VectorShapeError, match="aggregation 1 expects"):
        session.masked_input(clients["s0"], request, np.zeros(7, dtype=np.uint64))
    msgs = {s: session.masked_input(clients[s], request, good) for s in ("s0", "s1", "s2")}
    with pytest.raises(WrongRoundError, match="never re-used"):
        session.masked_input(clients["s0"], request, good)  # the same counter twice
    wrong = SessionMasked.create(
        clients["s1"].identity, run_id="run-1", round_num=1, silo="s1",
        b_commitment=msgs["s1"].b_commitment, ciphertexts=msgs["s1"].ciphertexts,
        vector=np.zeros(9, dtype=np.uint64),
    )  # fmt: skip
    with pytest.raises(VectorShapeError) as err:
        session_server.receive_masked(srv, wrong)
    assert err.value.silo == "s1" and err.value.round_num == 1
    session_server.receive_masked(srv, msgs["s0"])
    session_server.receive_masked(srv, msgs["s1"])
    session_server.close_masked(srv)
    requests = session_server.unmask_requests(srv)
    bad = requests["s0"].__class__(
        "run-1", 1, "s0", ("s1",), ("s0", "s2"), {}, requests["s0"].ciphertexts
    )
    with pytest.raises(UnmaskRefusedError, match="dropped"):
        session.unmask(clients["s0"], bad)
    session.unmask(clients["s0"], requests["s0"])
    other = requests["s0"].__class__("run-1", 1, "s0", ("s0", "s1", "s2"), (), {}, {})
    with pytest.raises(UnmaskRefusedError):
        session.unmask(clients["s0"], other)  # a second, different answer


def test_invalid_keys_and_pair_seeds_are_refused_naming_the_silo() -> None:
    """Accepted, a bad session key broke every peer's setup, and a pairwise seed of the wrong
    length broke the unmasking of the aggregation (a 500 for the next honest silo)."""
    cfg = session.SessionConfig("run-1", ("s0", "s1", "s2"), 2, 64, False)
    identity = generate_identity()
    srv = session_server.SessionServer(cfg, {"s0": identity_public_bytes(identity)})
    _, advert = session.start_session(cfg, "s0", identity, srv.roster_keys)
    for field, key in (("c_pk", bytes(32)), ("s_pk", bytes(2))):
        keys = {"c_pk": advert.c_pk, "s_pk": advert.s_pk, field: key}
        bad = SessionAdvert.create(identity, run_id="run-1", round_num=0, silo="s0", **keys)
        with pytest.raises(MessageFormatError, match=f"{field} is not a valid X25519") as err:
            session_server.receive_advert(srv, bad)
        assert err.value.silo == "s0" and not srv.adverts

    srv, clients = setup(3, 2, consistency=False)
    request = session_server.open_aggregation(srv, 8)
    for s in ("s0", "s1"):  # s2 drops
        masked = session.masked_input(clients[s], request, np.zeros(8, dtype=np.uint64))
        session_server.receive_masked(srv, masked)
    session_server.close_masked(srv)
    answer = session.unmask(clients["s0"], session_server.unmask_requests(srv)["s0"])
    short = SessionUnmaskResponse.create(
        clients["s0"].identity, run_id="run-1", round_num=1, silo="s0",
        b_shares=answer.b_shares, pair_seeds={"s2": b"\x01"},
    )  # fmt: skip
    with pytest.raises(MessageFormatError, match="seed with s2 is 1 bytes") as err:
        session_server.receive_unmask(srv, short)
    assert (err.value.silo, err.value.round_num) == ("s0", 1) and not srv.current.responses
    session_server.receive_unmask(srv, answer)  # the right answer still counts
