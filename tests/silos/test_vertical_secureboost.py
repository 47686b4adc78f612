"""Vertical SecureBoost: lossless against the same algorithm on pooled columns, passive
parties only ever see ciphertexts, tampering and wrong keys are refused naming the party."""

from __future__ import annotations

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from schemas.vertical import EncryptedGradients, EncryptedHistogram, HistogramBatch
from silos.vertical import he
from silos.vertical.active import ActiveError, ActiveParty, fit_plain
from silos.vertical.channel import Channel, ChannelError, channels
from silos.vertical.passive import PassiveParty
from silos.vertical.secureboost import predict_proba, train
from silos.vertical.trees import BoostParams, logistic_grad
from silos.vertical.wire import LocalWire

RUN = "vb-test"
PARAMS = BoostParams(n_trees=2, max_depth=3, n_bins=8, eta=0.3)
KEYS = he.generate_keypair()


def _data(n: int = 300, seed: int = 3) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 7))
    y = ((X[:, 1] - X[:, 4] + X[:, 6] + 0.5 * rng.normal(size=n)) > 0).astype(float)
    return X, y


def _parties(X: np.ndarray, y: np.ndarray, keep: bool = False):
    active = ActiveParty("bank", RUN, X[:, :2], y, {"bureau": 3, "insurer": 2}, PARAMS, KEYS)
    passives = {
        "bureau": PassiveParty("bureau", RUN, X[:, 2:5], n_bins=8, workers=1),
        "insurer": PassiveParty("insurer", RUN, X[:, 5:], n_bins=8, workers=1),
    }
    wire = LocalWire(channels(RUN, ["bank", "bureau", "insurer"]), keep_frames=keep)
    return active, passives, wire


def test_vertical_model_equals_the_pooled_model_exactly() -> None:
    X, y = _data()
    active, passives, wire = _parties(X, y)
    trees = train(active, passives, wire)
    bins = np.concatenate([active.bins, passives["bureau"].bins, passives["insurer"].bins], 1)
    ref_trees, ref_margin = fit_plain(bins, y, PARAMS)
    assert np.array_equal(active.margin, ref_margin)
    owners = {n.owner for t in trees for n in t.nodes.values() if not n.is_leaf}
    assert owners & {"bureau", "insurer"}, "the test data must make passive features win"
    for t, r in zip(trees, ref_trees, strict=True):
        assert sorted(t.nodes) == sorted(r.nodes)
        assert [t.nodes[k].weight for k in sorted(t.nodes)] == [
            r.nodes[k].weight for k in sorted(r.nodes)
        ]
    # joint prediction on fresh rows routes through every party's own nodes
    Xn, _ = _data(50, seed=9)
    proba = predict_proba(
        active, passives, wire, Xn[:, :2], {"bureau": Xn[:, 2:5], "insurer": Xn[:, 5:]}
    )
    assert proba.shape == (50,) and np.all((proba > 0) & (proba < 1))
    assert len(np.unique(proba)) > 2
    # the passive parties keep thresholds; the active party's tree holds only records
    assert passives["bureau"].records or passives["insurer"].records


def _walk(value: object) -> list[object]:
    if isinstance(value, BaseModel):
        return _walk(value.model_dump())
    if isinstance(value, dict):
        return [x for v in value.values() for x in _walk(v)]
    if isinstance(value, list | tuple):
        return [x for v in value for x in _walk(v)]
    return [value]


def test_a_passive_party_receives_only_ciphertexts_of_gradients() -> None:
    X, y = _data(150)
    active, passives, wire = _parties(X, y, keep=True)
    train(active, passives, wire)
    got = wire.opened["bureau"]
    assert {m.kind for m in got} == {"he_key", "gradients", "hist_request", "split"}
    assert not any(isinstance(v, float) for m in got for v in _walk(m))
    grads = [m for m in got if isinstance(m, EncryptedGradients)]
    assert [m.tree for m in grads] == [0, 1]
    cts = he.from_bytes(KEYS.public, grads[0].ciphertexts, "bank", "gradients")
    g, h = logistic_grad(y, np.zeros(len(y)))
    packed = he.pack_rows(*he.encode_gh(g, h))
    assert len(cts) == len(y)
    assert all(c > KEYS.public.n for c in cts)  # plaintexts are below 2^156
    assert not set(cts) & set(packed)
    assert he.decrypt_many(KEYS, cts[:20]) == packed[:20]  # yet they do encrypt the gradients
    assert len({c for c in cts}) == len(cts)  # randomized: equal gradients, distinct ciphertexts


def test_a_tampered_message_is_refused_naming_the_party() -> None:
    X, y = _data(60)
    active, passives, wire = _parties(X, y)
    seen = {"n": 0}

    def flip_second(data: bytes) -> bytes:  # the second message to the bureau: gradients
        seen["n"] += 1
        return data if seen["n"] != 2 else data[:200] + bytes([data[200] ^ 4]) + data[201:]

    wire.tamper["bureau"] = flip_second
    with pytest.raises(ChannelError, match="'bureau' refused a message from party 'bank'"):
        train(active, passives, wire)


def test_a_wrong_key_is_refused_naming_the_party() -> None:
    X, y = _data(60)
    active, passives, wire = _parties(X, y)
    impostor = X25519PrivateKey.generate()
    real = wire.channels["bank"]
    wire.channels["bank"] = Channel(RUN, "bank", impostor, dict(real.peers))
    with pytest.raises(ChannelError, match="from party 'bank'.*another key"):
        train(active, passives, wire)


def test_an_invalid_paillier_ciphertext_is_refused_naming_the_party() -> None:
    width = KEYS.public.ciphertext_bytes
    too_big = (KEYS.public.nsquare + 5).to_bytes(width, "big")
    multiple_of_n = KEYS.public.n.to_bytes(width, "big")
    for blob in (bytes(width), too_big, multiple_of_n, b"\x01" * (width - 1)):
        with pytest.raises(he.HeError, match="party 'bank'"):
            he.from_bytes(KEYS.public, blob, "bank", "gradients of tree 0")


def test_packed_bucket_sums_decrypt_to_the_exact_integer_sums() -> None:
    rng = np.random.default_rng(0)
    g, h = rng.uniform(-1, 1, 300), rng.uniform(0, 0.25, 300)
    gi, hi = he.encode_gh(g, h)
    cts = he.encrypt_many(KEYS, he.pack_rows(gi, hi), workers=1)
    bins = rng.integers(0, 20, 300).tolist()
    rows = [i for i in range(300) if i % 3]
    sums = he.compress(KEYS.public, he.bucket_sums(KEYS.public, cts, bins, rows, 20))
    assert len(sums) == -(-20 // KEYS.public.bins_per_ciphertext)
    got = he.decompress(KEYS, sums, 20)
    for b in range(20):
        idx = [i for i in rows if bins[i] == b]
        want = (
            sum(gi[i] for i in idx) - len(idx) * 2**he.FRAC_BITS,
            sum(hi[i] for i in idx),
            len(idx),
        )
        assert got[b] == want


def test_paired_bucket_sums_equal_single_ones() -> None:
    rng = np.random.default_rng(2)
    cts = he.encrypt_many(KEYS, list(range(1, 201)), workers=1)
    a, b = rng.integers(0, 5, 200).tolist(), rng.integers(0, 3, 200).tolist()
    rows = list(range(0, 200, 2))
    pair = he.bucket_sums_pair(KEYS.public, cts, a, b, rows, 5, 3)
    assert pair[0] == he.bucket_sums(KEYS.public, cts, a, rows, 5)
    assert pair[1] == he.bucket_sums(KEYS.public, cts, b, rows, 3)


@settings(max_examples=60, deadline=None)
@given(
    rows=st.lists(
        st.lists(
            st.tuples(
                st.floats(-1, 1, allow_nan=False),
                st.floats(0, 1, allow_nan=False),
            ),
            min_size=0,
            max_size=12,
        ),
        min_size=1,
        max_size=13,
    ),
    repeat=st.integers(1, he.MAX_ROWS // 12),
)
def test_packed_bin_sums_unpack_to_the_exact_sums(rows: list, repeat: int) -> None:
    """Up to 13 bins a ciphertext, each the sum of up to MAX_ROWS packed rows (`repeat`
    copies of a few rows, up to the extremes g = 1, h = 1): no slot carries into the next
    and the packed plaintext stays below n."""
    sums, want = [], []
    for bin_rows in rows:
        g = np.array([r[0] for r in bin_rows])
        h = np.array([r[1] for r in bin_rows])
        gi, hi = he.encode_gh(g, h)
        sums.append(repeat * sum(he.pack_rows(gi, hi)))
        want.append(
            (
                repeat * (sum(gi) - len(gi) * 2**he.FRAC_BITS),
                repeat * sum(hi),
                repeat * len(gi),
            )
        )
    plain = 0
    for s in sums:  # what compress's Horner steps encrypt
        plain = (plain << he.PACK_BITS) + s
    assert plain < KEYS.public.n
    assert he.unpack_bins(KEYS.public, [plain], len(sums)) == want


def test_the_extreme_bin_sums_fit_their_slots() -> None:
    one = he.pack_rows(*he.encode_gh(np.array([1.0]), np.array([1.0])))[0]
    top = he.MAX_ROWS * one
    assert he.unpack_sum(top) == (
        he.MAX_ROWS << he.FRAC_BITS,
        he.MAX_ROWS << he.FRAC_BITS,
        he.MAX_ROWS,
    )
    assert top < 1 << he.PACK_BITS
    assert KEYS.public.bins_per_ciphertext == 13


def test_decryption_on_several_cores_keeps_the_order() -> None:
    cts = he.encrypt_many(KEYS, list(range(100, 180)), workers=1)
    assert he.decrypt_many(KEYS, cts, workers=2) == list(range(100, 180))
    assert he.decrypt_many(KEYS, cts, workers=1) == list(range(100, 180))


def test_bin_sums_packed_another_way_are_refused_naming_the_party() -> None:
    X, y = _data(60)
    active, _, _ = _parties(X, y)
    per = KEYS.public.bins_per_ciphertext
    n_bins = [8, 8, 8]
    cts = he.encrypt_many(KEYS, [1] * sum(-(-nb // per) for nb in n_bins), workers=1)
    reply = HistogramBatch(
        run=RUN,
        sender="bureau",
        tree=0,
        histograms=[
            EncryptedHistogram(
                run=RUN,
                sender="bureau",
                tree=0,
                node=0,
                n_bins=n_bins,
                pack_bits=216,  # the layout before 2026-12-07
                ciphertexts=he.to_bytes(KEYS.public, cts),
            )
        ],
    )
    with pytest.raises(ActiveError, match="party 'bureau' packed .* 216 bits apart"):
        active._decrypt(reply, "bureau", 0, [0])
