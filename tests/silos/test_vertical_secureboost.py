"""Vertical SecureBoost: lossless against the same algorithm on pooled columns, passive
parties only ever see ciphertexts, tampering and wrong keys are refused naming the party."""

from __future__ import annotations

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, ValidationError

from schemas.vertical import (
    EncryptedGradients,
    EncryptedHistogram,
    Features,
    HistogramBatch,
    HistogramRequest,
    InstanceSplit,
    NodeRows,
    PredictRequest,
    PredictRoutes,
    SplitDecision,
)
from silos.vertical import he
from silos.vertical.active import ActiveError, ActiveParty, fit_plain
from silos.vertical.channel import Channel, ChannelError, channels
from silos.vertical.passive import PassiveError, PassiveParty, from_bitmap, to_bitmap
from silos.vertical.secureboost import predict_proba, train
from silos.vertical.trees import MAX_ROWS, BoostParams, logistic_grad
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
        "bureau": PassiveParty("bureau", RUN, X[:, 2:5], workers=1, params=PARAMS),
        "insurer": PassiveParty("insurer", RUN, X[:, 5:], workers=1, params=PARAMS),
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
        active._decrypt(
            reply, "bureau", 0, {0: np.arange(60)}, np.zeros(60, np.int64), np.zeros(60, np.int64)
        )


# --- what a party answers: only what an honest tree growth asks -----------------------------

_GRADS: dict[int, bytes] = {}


def _grads(n: int, tree: int = 0, blob: bytes | None = None) -> EncryptedGradients:
    if n not in _GRADS:
        g, h = logistic_grad(np.arange(n) % 2, np.zeros(n))
        cts = he.encrypt_many(KEYS, he.pack_rows(*he.encode_gh(g, h)), workers=1)
        _GRADS[n] = he.to_bytes(KEYS.public, cts)
    cts = _GRADS[n] if blob is None else blob
    return EncryptedGradients(run=RUN, sender="bank", tree=tree, n_rows=n, ciphertexts=cts)


def _passive(n: int = 40, params: BoostParams = PARAMS, grads: bool = True) -> PassiveParty:
    X = np.random.default_rng(0).normal(size=(n, 3))
    party = PassiveParty("bureau", RUN, X, workers=1, params=params)
    party.handle(he.key_message(RUN, "bank", KEYS.public))
    if grads:
        party.handle(_grads(n))
    return party


def _hists(tree: int, nodes: dict[int, np.ndarray]) -> HistogramRequest:
    req = [NodeRows(node=k, rows=to_bitmap(m)) for k, m in nodes.items()]
    return HistogramRequest(run=RUN, sender="bank", tree=tree, nodes=req)


def _split(tree: int, node: int, rows: np.ndarray, feature: int = 0, b: int = 3) -> SplitDecision:
    return SplitDecision(
        run=RUN, sender="bank", tree=tree, node=node, feature=feature, bin=b, rows=to_bitmap(rows)
    )


def _refused(party: PassiveParty, msg: object, match: str) -> None:
    with pytest.raises(PassiveError, match=f"party 'bureau' refused .*party 'bank'.*{match}"):
        party.handle(msg)  # type: ignore[arg-type]


def test_histograms_only_for_the_instance_spaces_of_the_tree() -> None:
    party = _passive()
    every, n = np.ones(40, bool), 40
    one = [np.eye(n, dtype=bool)[i] for i in range(n)]
    # one single-row "node" per row would hand out every row's bins
    _refused(party, _hists(0, {1000 + i: one[i] for i in range(n)}), "deeper than")
    _refused(party, _hists(0, {2**40: every}), "deeper than")
    _refused(party, _hists(0, {0: one[3]}), "not the rows of that node")
    _refused(party, _hists(0, {3: one[3]}), "parent was not split")
    assert party.handle(_hists(0, {0: every})).histograms[0].node == 0
    _refused(party, _hists(0, {0: every}), "asked again")
    # a child of a split it was not told of: inside its parent, both sides >= 4 rows
    _refused(party, _hists(0, {1: one[3]}), "under 4 rows")
    _refused(party, _hists(0, {1: ~one[3]}), "sibling 2 under 4")
    left = np.arange(n) < 15
    # a refused batch changes nothing: its first node stays unanswered
    _refused(party, _hists(0, {1: left, 9: left}), "deeper than")
    assert party.handle(_hists(0, {1: left})).histograms[0].node == 1
    # the sibling is the rest of the parent; a grandchild must lie inside its parent
    _refused(party, _hists(0, {3: ~left & (np.arange(n) < 30)}), "not a subset of node 1")
    _refused(party, _hists(0, {4: left}), "sibling 3 under 4")
    _refused(party, _split(0, 2, left), "not the rows of that node")
    party.handle(_split(0, 2, ~left))
    _refused(party, _hists(0, {7: left}), "deeper than")  # depth 3 = max_depth: leaves


def test_splits_only_once_per_node_of_the_current_tree_on_its_rows() -> None:
    party = _passive()
    every = np.ones(40, bool)
    _refused(party, _split(999, 0, every), "gradients of tree 0")
    _refused(party, _split(0, 5, every), "no such node")
    _refused(party, _split(0, 0, np.arange(40) < 20), "not the rows of that node")
    fine = _passive(params=BoostParams(n_trees=2, n_bins=32))  # bin 0: about 40 / 32 rows
    _refused(fine, _split(0, 0, every, b=0), "a side under 4 rows")
    reply = party.handle(_split(0, 0, every))
    assert isinstance(reply, InstanceSplit) and party.records == {0: party.records[0]}
    _refused(party, _split(0, 0, every), "split already")
    left = from_bitmap(reply.left, 40, "bureau", "left")
    _refused(party, _hists(0, {1: every}), "not the rows of that node")
    assert party.handle(_hists(0, {1: left})).histograms[0].node == 1  # the rows it sent
    assert len(party.records) == 1


def test_predictions_only_after_training_and_no_record_twice() -> None:
    party = _passive(params=BoostParams(n_trees=2, max_depth=2, n_bins=8))
    party.set_predict_rows(party.X)
    party.handle(_split(0, 0, np.ones(40, bool)))
    request = PredictRequest(run=RUN, sender="bank", n_rows=40, records=[0])
    _refused(party, request, "after 1 of the run's 2 trees")
    party.handle(_grads(40, tree=1))
    twice = PredictRequest(run=RUN, sender="bank", n_rows=40, records=[0] * 100_000)
    _refused(party, twice, "naming a record twice")
    assert isinstance(party.handle(request), PredictRoutes)
    _refused(party, _hists(1, {0: np.ones(40, bool)}), "after training ended")
    # a prediction run loads the trained records: training is over by construction
    loaded = PassiveParty("bureau", RUN, party.X)
    loaded.load_records(party.records)
    loaded.set_predict_rows(party.X)
    assert loaded._routes(request).left == party.handle(request).left
    with pytest.raises(PassiveError, match="record 0 of its model names feature 7"):
        loaded.load_records({0: (7, 0.5)})


def test_gradients_one_per_row_trees_in_order_within_the_run_one_key() -> None:
    party = _passive(grads=False)
    width = KEYS.public.ciphertext_bytes
    _refused(party, _grads(40, blob=_grads(40).ciphertexts[: 5 * width]), "5 ciphertexts for 40")
    _refused(party, _grads(40, tree=1), "next is 0")
    party.handle(_grads(40))
    _refused(party, _grads(40), "next is 1")
    _refused(party, _grads(40, tree=5000), "the run has 2 trees")
    party.handle(_grads(40, tree=1))
    _refused(party, _grads(40, tree=2), "the run has 2 trees")
    _refused(party, he.key_message(RUN, "bank", KEYS.public), "a second public key")
    other = he.key_message(RUN, "insurer", KEYS.public)
    with pytest.raises(PassiveError, match="party 'insurer'.*'bank' drives this run"):
        party.handle(other)


def test_histogram_ciphertexts_carry_the_passive_partys_own_randomness() -> None:
    """Two parties with the same rows and gradients: equal sums, unrelated ciphertexts, and
    neither the bare product of the key owner's ciphertexts (whose randomness it chose)."""
    a, b = _passive(), _passive()
    every = {0: np.ones(40, bool)}
    ha, hb = (
        he.from_bytes(
            KEYS.public, p.handle(_hists(0, every)).histograms[0].ciphertexts, "bureau", "histogram"
        )
        for p in (a, b)
    )
    assert he.decrypt_many(KEYS, ha) == he.decrypt_many(KEYS, hb)
    assert not set(ha) & set(hb)
    cts = he.from_bytes(KEYS.public, _GRADS[40], "bank", "gradients")
    bare = he.compress(
        KEYS.public, he.bucket_sums(KEYS.public, cts, a._cols[0], range(40), a._nb[0])
    )
    assert not set(bare) & set(ha)


def test_bad_bin_sums_and_bin_counts_are_refused_naming_the_passive_party() -> None:
    X, y = _data(60)
    active, _, _ = _parties(X, y)
    pub, per = KEYS.public, KEYS.public.bins_per_ciphertext

    def reply(n_bins: list[int], plains: list[int]) -> HistogramBatch:
        cts = he.encrypt_many(KEYS, plains, workers=1)
        hist = EncryptedHistogram(
            run=RUN, sender="bureau", tree=0, node=0, n_bins=n_bins,
            pack_bits=he.PACK_BITS, ciphertexts=he.to_bytes(pub, cts),
        )  # fmt: skip
        return HistogramBatch(run=RUN, sender="bureau", tree=0, histograms=[hist])

    empty, zeros = {0: np.arange(0)}, np.zeros(60, np.int64)
    assert active._decrypt(reply([8, 8, 8], [0, 0, 0]), "bureau", 0, empty, zeros, zeros)
    # a G slot of all ones: 2^66 - 1 decodes far beyond int64
    top = ((1 << he.G_BITS) - 1) << (he.H_BITS + he.COUNT_BITS)
    with pytest.raises(ActiveError, match="party 'bureau' sent bin sums for feature 0"):
        active._decrypt(reply([8, 8, 8], [top, 0, 0]), "bureau", 0, empty, zeros, zeros)
    with pytest.raises(ActiveError, match="party 'bureau' sent bin counts for node 0"):
        active._decrypt(reply([7, 8, 8], [0, 0, 0]), "bureau", 0, empty, zeros, zeros)
    assert per >= 8


def test_a_passive_split_that_does_not_match_its_histogram_is_refused() -> None:
    class Liar(PassiveParty):
        def _split(self, msg: SplitDecision) -> InstanceSplit:
            out = super()._split(msg)
            left = ~from_bitmap(out.left, self.n_rows, "", "")
            return out.model_copy(update={"left": to_bitmap(left)})

    X, y = _data()
    active, passives, wire = _parties(X, y)
    passives["bureau"] = Liar("bureau", RUN, X[:, 2:5], workers=1, params=PARAMS)
    passives["insurer"] = Liar("insurer", RUN, X[:, 5:], workers=1, params=PARAMS)
    with pytest.raises(ActiveError, match="party '(bureau|insurer)' split node .* not match"):
        train(active, passives, wire)


def test_feature_counts_and_rows_are_capped() -> None:
    with pytest.raises(ValidationError):
        Features(run=RUN, sender="bureau", count=2**40)
    X, y = _data(60)
    with pytest.raises(ActiveError, match="party 'bureau' brings 1099511627776 features"):
        ActiveParty("bank", RUN, X, y, {"bureau": 2**40}, PARAMS, KEYS)
    # past 2^22 rows a sum of 2^40-scaled gradients can leave int64: every party refuses
    big = np.zeros((MAX_ROWS + 1, 1))
    with pytest.raises(ActiveError, match=f"'bank': {MAX_ROWS + 1} rows, at most {MAX_ROWS}"):
        ActiveParty("bank", RUN, big, np.zeros(MAX_ROWS + 1), {}, PARAMS, KEYS)
    with pytest.raises(PassiveError, match=f"'bureau': {MAX_ROWS + 1} rows, at most"):
        PassiveParty("bureau", RUN, big)
    with pytest.raises(ValueError, match=f"at most {MAX_ROWS}"):
        fit_plain(big.astype(np.int32), np.zeros(MAX_ROWS + 1), PARAMS)
