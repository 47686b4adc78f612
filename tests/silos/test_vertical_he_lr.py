"""Paillier helpers for vertical logistic regression: signed encoding, plaintext additions and
encrypted inner products (`silos/vertical/he.py`), checked by decrypting."""

from __future__ import annotations

import random

import gmpy2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from silos.vertical import he

KEYS = he.generate_keypair(512)  # tiny key: the algebra is the same, the tests are fast
N = KEYS.public.n
HALF = N // 2

signed = st.integers(-(1 << 100), 1 << 100)
exponent = st.one_of(
    st.just(0),
    st.integers(-16, 16),
    st.integers(-(1 << 24), 1 << 24),
    st.integers(-(1 << 40), 1 << 40),
)


def _encrypt(values: list[int]) -> list[int]:
    return he.encrypt_many(KEYS, he.encode_signed(values, N), workers=1)


def _decrypt(cts: list[int]) -> list[int]:
    return he.decrypt_many(KEYS, cts, workers=1)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(-HALF + 1, HALF - 1), max_size=20))
def test_signed_encoding_round_trips(values: list[int]) -> None:
    encoded = he.encode_signed(values, N)
    assert all(0 <= m < N for m in encoded)
    assert he.decode_signed(encoded, N) == values


@settings(max_examples=30, deadline=None)
@given(st.lists(st.tuples(signed, st.integers(0, N - 1)), max_size=12))
def test_add_plain_decrypts_to_the_sum_mod_n(pairs: list[tuple[int, int]]) -> None:
    ms, ps = [m for m, _ in pairs], [p for _, p in pairs]
    cts = _encrypt(ms)
    out = he.add_plain(KEYS.public, cts, ps)
    assert _decrypt(out) == [(m + p) % N for m, p in zip(ms, ps, strict=True)]
    assert he.add_plain(KEYS.public, cts, ps) == out  # deterministic


@settings(max_examples=30, deadline=None)
@given(st.lists(st.tuples(signed, exponent), max_size=40))
def test_inner_product_decrypts_to_the_signed_sum(pairs: list[tuple[int, int]]) -> None:
    ms, es = [m for m, _ in pairs], [e for _, e in pairs]
    cts = _encrypt(ms)
    ct = he.inner_product(KEYS.public, cts, es)
    want = sum(m * e for m, e in pairs)
    (got,) = _decrypt([ct])
    assert got == want % N
    assert he.decode_signed([got], N) == [want]
    nsq = gmpy2.mpz(N * N)  # the very ciphertext that one powmod per element gives
    naive = gmpy2.mpz(1)
    for c, e in zip(cts, es, strict=True):
        naive = naive * gmpy2.powmod(c, e, nsq) % nsq
    assert ct == int(naive)


def test_inner_product_edge_cases() -> None:
    assert he.inner_product(KEYS.public, [], []) == 1
    assert _decrypt([he.inner_product(KEYS.public, _encrypt([5, 7]), [0, 0])]) == [0]
    # one exponent far past any window size, others crossing window boundaries
    ms = [3, -2, 1, 9, -4]
    es = [(1 << 300) + 1, -(1 << 64), (1 << 7) - 1, 1 << 7, -1]
    ct = he.inner_product(KEYS.public, _encrypt(ms), es)
    assert _decrypt([ct]) == [sum(m * e for m, e in zip(ms, es, strict=True)) % N]


def test_refusals() -> None:
    he.encode_signed([HALF - 1, -(HALF - 1)], N)
    for bad in (HALF, -HALF, N):
        with pytest.raises(he.HeError, match="bits"):
            he.encode_signed([0, bad], N)
    cts = _encrypt([1, 2])
    with pytest.raises(he.HeError):
        he.add_plain(KEYS.public, cts, [1])
    with pytest.raises(he.HeError):
        he.inner_product(KEYS.public, cts, [1, 2, 3])
    with pytest.raises(he.HeError, match="unit"):  # n itself has no inverse mod n^2
        he.inner_product(KEYS.public, [cts[0], N], [1, -1])


def test_inner_product_full_size_key() -> None:
    keys = he.generate_keypair(he.KEY_BITS)
    n = keys.public.n
    rng = random.Random(7)
    ms = [rng.randrange(-(1 << 64), 1 << 64) for _ in range(300)]
    es = [rng.randrange(-(1 << 24), 1 << 24) for _ in range(300)]
    cts = he.encrypt_many(keys, he.encode_signed(ms, n), workers=1)
    (got,) = he.decrypt_many(keys, [he.inner_product(keys.public, cts, es)], workers=1)
    assert he.decode_signed([got], n) == [sum(m * e for m, e in zip(ms, es, strict=True))]


def test_public_key_encryption_is_fresh_and_decrypts() -> None:
    """Anyone with the public key encrypts; two encryptions of one value differ."""
    values = [0, 1, KEYS.public.n - 1, 123456789]
    first, second = he.encrypt_public(KEYS.public, values), he.encrypt_public(KEYS.public, values)
    assert he.decrypt_many(KEYS, first, workers=1) == values
    assert he.decrypt_many(KEYS, second, workers=1) == values
    assert not set(first) & set(second)
