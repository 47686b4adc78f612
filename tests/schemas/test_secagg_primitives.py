"""Primitives of secure aggregation: crypto, Shamir sharing, PRG, quantization."""

from __future__ import annotations

import os

import numpy as np
import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas.secagg import crypto, prg, shamir
from schemas.secagg.config import RoundConfig, default_degree
from schemas.secagg.exceptions import (
    DecryptionError,
    InputError,
    InsufficientSharesError,
    ReconstructionError,
    SecAggConfigError,
    SignatureError,
)
from schemas.secagg.quantize import Quantizer

secrets32 = st.binary(min_size=32, max_size=32)


def test_share_encryption_is_bound_to_its_context():
    key = os.urandom(32)
    ad = crypto.share_associated_data("run", 1, "share", "a", "b")
    blob = crypto.encrypt(key, b"share", ad)
    assert crypto.decrypt(key, blob, ad) == b"share"
    for other in (
        crypto.share_associated_data("run", 2, "share", "a", "b"),  # another round
        crypto.share_associated_data("run", 1, "share", "a", "c"),  # redirected by the relay
        crypto.share_associated_data("run", 1, "share", "b", "a"),  # reversed direction
    ):
        with pytest.raises(DecryptionError):
            crypto.decrypt(key, blob, other)
    tampered = blob[:-1] + bytes([blob[-1] ^ 1])
    with pytest.raises(DecryptionError):
        crypto.decrypt(key, tampered, ad)


def test_ecdh_seeds_agree_and_labels_separate_uses():
    a, b = crypto.generate_x25519(), crypto.generate_x25519()
    ab = crypto.agree(a, crypto.x25519_public_bytes(b))
    ba = crypto.agree(b, crypto.x25519_public_bytes(a))
    ctx = {"run_id": "r", "round_num": 1, "a": "x", "b": "y"}
    seed = crypto.derive_mask_seed(ab, **ctx)
    assert seed == crypto.derive_mask_seed(ba, **{**ctx, "a": "y", "b": "x"})
    assert seed != crypto.derive_share_key(ab, **ctx)
    assert seed != crypto.derive_mask_seed(ab, **{**ctx, "round_num": 2})


def test_signature_is_bound_to_run_round_stage_and_silo():
    key = crypto.generate_identity()
    pub = crypto.identity_public_bytes(key)
    ctx = {"run_id": "r", "round_num": 1, "stage": "share", "silo": "a", "body": b"x"}
    sig = crypto.sign(key, **ctx)
    crypto.verify(pub, sig, **ctx)
    for change in ({"run_id": "q"}, {"round_num": 2}, {"stage": "masked"}, {"silo": "b"}):
        with pytest.raises(SignatureError):
            crypto.verify(pub, sig, **{**ctx, **change})
    other = crypto.identity_public_bytes(crypto.generate_identity())
    with pytest.raises(SignatureError):
        crypto.verify(other, sig, **ctx)


@settings(max_examples=40, deadline=None)
@given(secret=secrets32, n=st.integers(2, 12), data=st.data())
def test_shamir_any_t_shares_reconstruct(secret, n, data):
    t = data.draw(st.integers(1, n))
    shares = shamir.split(secret, t, list(range(1, n + 1)))
    chosen = data.draw(st.lists(st.sampled_from(sorted(shares)), min_size=t, unique=True))
    commitment = shamir.commit(secret, "ctx")
    picked = [shares[i] for i in chosen]
    assert shamir.reconstruct(picked, t, commitment, ("ctx",)) == secret
    assert [shamir.Share.from_bytes(s.to_bytes()) for s in picked] == picked


@settings(max_examples=40, deadline=None)
@given(secret=secrets32, n=st.integers(3, 12), data=st.data())
def test_shamir_t_minus_one_shares_give_a_wrong_secret(secret, n, data):
    t = data.draw(st.integers(2, n))
    shares = shamir.split(secret, t, list(range(1, n + 1)))
    chosen = data.draw(st.lists(st.sampled_from(sorted(shares)), min_size=t - 1, max_size=t - 1))
    chosen = sorted(set(chosen))
    few = [shares[i] for i in chosen]
    # interpolating too few points yields some other field element (probability 2^-521 of luck)
    assert shamir.interpolate_at_zero(few) != int.from_bytes(secret, "big")
    commitment = shamir.commit(secret)
    with pytest.raises(InsufficientSharesError) as err:
        shamir.reconstruct(few, t, commitment)
    assert (err.value.needed, err.value.got) == (t, len(few))
    # even told the threshold is lower, the commitment exposes the wrong reconstruction
    if few:
        with pytest.raises(ReconstructionError):
            shamir.reconstruct(few, len(few), commitment)


def test_shamir_rejects_bad_parameters():
    with pytest.raises(SecAggConfigError):
        shamir.split(b"x" * 31, 2, [1, 2])
    with pytest.raises(SecAggConfigError):
        shamir.split(b"x" * 32, 3, [1, 2])
    with pytest.raises(SecAggConfigError):
        shamir.split(b"x" * 32, 2, [0, 1])


def test_prg_matches_aes_ctr_keystream_and_is_seed_specific():
    seed = bytes(range(32))
    enc = Cipher(algorithms.AES(seed), modes.CTR(bytes(16))).encryptor()
    reference = np.frombuffer(enc.update(bytes(4 * 300_001)), dtype="<u4")
    assert np.array_equal(prg.expand(seed, 300_001, 32), reference)
    assert np.array_equal(prg.expand(seed, 7, 64), np.frombuffer(reference[:14].tobytes(), "<u8"))
    assert not np.array_equal(prg.expand(os.urandom(32), 1000, 32), reference[:1000])


@settings(max_examples=30, deadline=None)
@given(d=st.integers(1, 300_000), bits=st.sampled_from([32, 64]), sign=st.sampled_from([1, -1]))
def test_add_mask_is_modular_addition_of_the_expansion(d, bits, sign):
    seed = os.urandom(32)
    acc = prg.expand(os.urandom(32), d, bits).copy()
    expected = acc + prg.expand(seed, d, bits) if sign == 1 else acc - prg.expand(seed, d, bits)
    prg.add_mask(acc, seed, sign)
    assert np.array_equal(acc, expected)


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(1, 50),
    bits=st.sampled_from([32, 64]),
    clip=st.floats(1e-3, 1e3),
    data=st.data(),
)
def test_quantized_sum_error_within_documented_bound(n, bits, clip, data):
    quant = Quantizer(clip, n, bits)
    d = data.draw(st.integers(1, 64))
    values = st.floats(-2 * clip, 2 * clip, allow_nan=False)
    xs = [
        np.array(data.draw(st.lists(values, min_size=d, max_size=d)), np.float32) for _ in range(n)
    ]
    total = np.zeros(d, quant.dtype)
    for x in xs:
        total += quant.quantize(x)
    clipped = sum(np.clip(x.astype(np.float64), -clip, clip) for x in xs)
    error = np.abs(quant.dequantize_sum(total) - clipped)
    assert (error < quant.sum_error_bound(n) + 1e-12 * n * clip).all()  # float64 slack


@pytest.mark.parametrize("bits", [32, 64])
def test_headroom_extremes_do_not_wrap(bits):
    n = 7
    quant = Quantizer(0.5, n, bits)
    for sign in (1.0, -1.0):
        total = np.zeros(3, quant.dtype)
        for _ in range(n):
            total += quant.quantize(np.full(3, sign * 10.0, np.float32))  # clipped to +-c
        assert np.allclose(quant.dequantize_sum(total), sign * 0.5 * n)
    assert n * quant.level <= 2 ** (bits - 1) - 1


def test_stochastic_rounding_is_unbiased():
    quant = Quantizer(1.0, 2**30, 32)  # level 1: every value rounds to -1, 0 or 1
    x = np.full(200_000, 0.3, np.float32)
    q = quant.quantize(x).view("<i4")
    assert set(np.unique(q)) <= {0, 1}
    assert abs(q.mean() - 0.3) < 0.01
    assert not np.array_equal(quant.quantize(x), quant.quantize(x))  # fresh randomness


def test_quantize_rejects_non_finite_and_bad_parameters():
    with pytest.raises(InputError):
        Quantizer(1.0, 3).quantize(np.array([0.0, np.nan]))
    with pytest.raises(SecAggConfigError):
        Quantizer(1.0, 3, bits=16)
    with pytest.raises(SecAggConfigError):
        Quantizer(0.0, 3)


def test_secagg_plus_graph_is_regular_symmetric_and_deterministic():
    silos = tuple(f"s{i:02d}" for i in range(50))
    degree = default_degree(50)
    cfg = RoundConfig("run", 1, silos, 10, 5, degree=degree)
    graph = cfg.neighbours
    assert all(len(graph[s]) == degree and s not in graph[s] for s in silos)
    assert all(a in graph[b] for a in silos for b in graph[a])
    assert RoundConfig("run", 1, silos, 10, 5, degree=degree).neighbours == graph
    assert RoundConfig("run", 2, silos, 10, 5, degree=degree).neighbours != graph
    with pytest.raises(SecAggConfigError):
        RoundConfig("run", 1, silos, 10, 5, degree=7)
    with pytest.raises(SecAggConfigError):
        RoundConfig("run", 1, silos, 30, 5, degree=degree)


def test_a_run_spec_refuses_an_odd_secagg_plus_degree():
    from schemas.specs import SecureAggregationSpec

    assert SecureAggregationSpec(degree=4).degree == 4
    with pytest.raises(ValueError, match="degree must be even, got 5"):
        SecureAggregationSpec(degree=5)
