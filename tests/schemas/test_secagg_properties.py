"""Properties of whole rounds: unmasking yields exactly the survivors' quantized sum."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support.secagg_simulate import run_round

from aggregation.secagg import server
from schemas.secagg.config import RoundConfig
from schemas.secagg.crypto import generate_identity, identity_public_bytes
from schemas.secagg.exceptions import InsufficientSharesError
from schemas.secagg.prg import expand
from silos.secagg import client

IDENTITIES = {f"silo-{i}": generate_identity() for i in range(12)}  # Ed25519 keygen is cheap,
# but reusing long-term identities across examples is also what a federation does


def _inputs(silos, d, bits, seed):
    # protocol inputs are arbitrary integers mod 2^k; draw them from the package's own PRG
    return {s: expand(bytes([seed % 256, i]) * 16, d, bits) for i, s in enumerate(silos)}


def _expected(inputs, survivors, dtype):
    total = np.zeros(next(iter(inputs.values())).size, dtype)
    for s in survivors:
        total += inputs[s]
    return total


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    n=st.integers(2, 8),
    d=st.integers(1, 2000),
    bits=st.sampled_from([32, 64]),
    consistency=st.booleans(),
    data=st.data(),
)
def test_unmasked_sum_equals_sum_of_quantized_inputs_exactly(n, d, bits, consistency, data):
    silos = tuple(sorted(IDENTITIES)[:n])
    t = data.draw(st.integers(2, n), label="t")
    drop_count = data.draw(st.integers(0, n - t), label="dropouts")
    dropped = data.draw(st.permutations(silos))[:drop_count]
    cfg = RoundConfig("run-p", 1, silos, t, d, bits, consistency_check=consistency)
    inputs = _inputs(silos, d, bits, data.draw(st.integers(0, 255)))
    report = run_round(cfg, inputs, IDENTITIES, drop_after_share=dropped)
    survivors = [s for s in silos if s not in dropped]
    assert report.survivors == tuple(survivors)
    assert report.dropped == tuple(sorted(dropped))
    assert np.array_equal(report.total, _expected(inputs, survivors, report.total.dtype))


@settings(max_examples=8, deadline=None)
@given(n=st.integers(8, 12), data=st.data())
def test_secagg_plus_sparse_graph_sum_is_exact(n, data):
    silos = tuple(sorted(IDENTITIES)[:n])
    degree = data.draw(st.sampled_from([d for d in (2, 4, 6) if d < n - 1]))
    t = data.draw(st.integers(2, degree + 1))
    cfg = RoundConfig("run-plus", 2, silos, t, 300, degree=degree)
    inputs = _inputs(silos, 300, 32, n)
    # one dropout leaves each neighbourhood (degree + 1 silos) with >= t members iff t <= degree
    dropped = data.draw(st.lists(st.sampled_from(silos), max_size=1 if t <= degree else 0))
    report = run_round(cfg, inputs, IDENTITIES, drop_after_share=dropped)
    survivors = [s for s in silos if s not in dropped]
    assert np.array_equal(report.total, _expected(inputs, survivors, np.uint32))


@settings(max_examples=10, deadline=None)
@given(n=st.integers(3, 7), data=st.data())
def test_late_dropouts_that_do_not_help_unmask_are_still_counted(n, data):
    silos = tuple(sorted(IDENTITIES)[:n])
    t = data.draw(st.integers(2, n - 1))
    silent = data.draw(st.permutations(silos))[: n - t]
    cfg = RoundConfig("run-late", 4, silos, t, 50, consistency_check=False)
    inputs = _inputs(silos, 50, 32, 9)
    report = run_round(cfg, inputs, IDENTITIES, drop_after_masked=silent)
    assert np.array_equal(report.total, _expected(inputs, silos, np.uint32))


@settings(max_examples=10, deadline=None)
@given(n=st.integers(3, 8), data=st.data())
def test_fewer_than_t_survivors_fails_naming_needed_and_got(n, data):
    silos = tuple(sorted(IDENTITIES)[:n])
    t = data.draw(st.integers(2, n))
    dropped = data.draw(st.permutations(silos))[: data.draw(st.integers(n - t + 1, n))]
    cfg = RoundConfig("run-f", 1, silos, t, 10)
    with pytest.raises(InsufficientSharesError) as err:
        run_round(cfg, _inputs(silos, 10, 32, 1), IDENTITIES, drop_after_share=dropped)
    assert (err.value.needed, err.value.got) == (t, n - len(dropped))
    assert f"needed {t}, got {n - len(dropped)}" in str(err.value)


def test_too_few_unmask_helpers_fails_at_finalize():
    silos = tuple(sorted(IDENTITIES)[:5])
    cfg = RoundConfig("run-h", 1, silos, 3, 10, consistency_check=False)
    inputs = _inputs(silos, 10, 32, 2)
    with pytest.raises(InsufficientSharesError) as err:
        run_round(cfg, inputs, IDENTITIES, drop_after_share=silos[:1], drop_after_masked=silos[1:3])
    assert (err.value.needed, err.value.got) == (3, 2)
    assert err.value.stage == "unmask"


def test_service_sees_only_masked_vectors():
    silos = tuple(sorted(IDENTITIES)[:4])
    cfg = RoundConfig("run-v", 1, silos, 3, 1000)
    roster = {s: identity_public_bytes(IDENTITIES[s]) for s in silos}
    srv = server.ServerState(cfg, roster)
    states = {}
    for s in silos:
        states[s], advert = client.advertise_keys(cfg, s, IDENTITIES[s], roster)
        server.receive_advertise(srv, advert)
    adverts = server.close_advertise(srv)
    for s in silos:
        server.receive_shares(srv, client.share_keys(states[s], adverts))
    deliveries = server.close_shares(srv)
    zero = np.zeros(1000, np.uint32)
    masked = [client.masked_input(states[s], deliveries[s], zero).vector for s in silos]
    for vector in masked:  # an all-zero update looks uniformly random to the service
        assert np.count_nonzero(vector) > 990
        assert 0.4 < (vector >> 31).mean() < 0.6
