"""Vertical logistic regression: the federated weights equal the same integer arithmetic on
pooled columns, the passive party sees no label, residual or gradient in the clear, and
malformed or out-of-order messages are refused naming the party."""

from __future__ import annotations

import numpy as np
import pytest

from schemas.task_metrics import roc_auc
from schemas.vertical import (
    LrBatch,
    LrExchange,
    LrExchangeReply,
    LrOpened,
    LrPredictRequest,
    VerticalMessage,
)
from silos.vertical import he
from silos.vertical.channel import channels
from silos.vertical.logreg import (
    MASK_BITS,
    LrActive,
    LrError,
    LrParams,
    LrPassive,
    fit_plain,
    label_part,
    scores,
)
from silos.vertical.secureboost import request_reply
from silos.vertical.wire import LocalWire

RUN = "vlr-test"
KEYS_A = he.generate_keypair()
KEYS_P = he.generate_keypair()
PARAMS = LrParams(epochs=2, batch_rows=96, learning_rate=0.5, seed=7)


def _data(n: int = 300, seed: int = 3) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 6)) * [1, 3, 0.5, 10, 1, 2] + [0, 5, -1, 50, 0, 0]
    logit = X[:, 0] - 0.4 * X[:, 1] + 0.2 * X[:, 3] - 10 + 1.5 * X[:, 4] - X[:, 5]
    y = (logit + rng.logistic(size=n) > 0).astype(np.int64)
    return X, y


def _parties(X: np.ndarray, y: np.ndarray, keep: bool = False, params: LrParams = PARAMS):
    active = LrActive("bank", RUN, X[:, :2], y, "bureau", 4, params, KEYS_A)
    passive = LrPassive("bureau", RUN, X[:, 2:], params=params, keys=KEYS_P)
    wire = LocalWire(channels(RUN, ["bank", "bureau"]), keep_frames=keep)
    return active, passive, wire, request_reply(wire, {"bureau": passive})


def test_federated_weights_equal_the_pooled_integer_arithmetic_exactly() -> None:
    X, y = _data()
    active, passive, wire, send = _parties(X, y)
    active.fit(send)
    wa, wp = fit_plain(X[:, :2], X[:, 2:], y, PARAMS, active.w0)
    assert active.steps == passive.steps == 2 * 4  # 300 rows in batches of 96, twice
    assert np.array_equal(active.w, wa) and np.array_equal(passive.w, wp)
    assert np.abs(wp).max() > 0.1, "the passive party's columns must carry signal here"
    # joint prediction of fresh rows: the passive party's partial scores finish the sum
    Xn, yn = _data(200, seed=9)
    passive.set_predict_rows(Xn[:, 2:])
    margin = active.predict_margin(Xn[:, :2], send)
    auc = roc_auc(yn, margin)
    assert auc is not None and auc > 0.8


def test_the_passive_party_sees_no_label_residual_or_gradient_in_the_clear() -> None:
    X, y = _data(150)
    active, passive, wire, send = _parties(X, y, keep=True)
    active.fit(send)
    got = wire.opened["bureau"]
    assert {m.kind for m in got} == {"he_key", "lr_batch", "lr_exchange", "lr_opened"}
    exchange = next(m for m in got if isinstance(m, LrExchange))
    batch = next(m for m in got if isinstance(m, LrBatch) and m.step == exchange.step)
    rows = np.frombuffer(batch.rows, dtype="<u4").astype(np.int64)
    residual = he.from_bytes(KEYS_A.public, exchange.residual, "bank", "residuals")
    assert exchange.step == 0  # the active party's weights are still its starting ones
    e = label_part(scores(active.xq[rows], active.w0), y[rows])
    plain = he.encode_signed([int(v) for v in e], KEYS_A.public.n)
    assert len(residual) == len(rows) and not set(residual) & set(plain)
    assert he.decrypt_many(KEYS_A, residual[:10]) == plain[:10]  # yet they are the residuals
    # what it decrypts and what it is sent opened are gradients plus masks 2^80 wider
    opened = next(m for m in got if isinstance(m, LrOpened))
    width = (KEYS_A.public.n.bit_length() + 7) // 8
    values = [
        int.from_bytes(opened.opened[i : i + width], "big")
        for i in range(0, len(opened.opened), width)
    ]
    assert len(values) == 4 and all(v.bit_length() > MASK_BITS - 20 for v in values)


def test_an_out_of_order_step_is_refused_naming_the_party() -> None:
    X, y = _data(100)
    active, passive, wire, send = _parties(X, y)
    active.exchange_keys(send)
    with pytest.raises(LrError, match="party 'bank' sent a second key"):
        active.exchange_keys(send)
    with pytest.raises(LrError, match="party 'bank' opened step 3; step 0 is next"):
        send("bank", "bureau", LrBatch(run=RUN, sender="bank", step=3, rows=b"\x00\x00\x00\x00"))
    # the passive party takes the rows from the run's schedule, not on the active's word
    plan = passive.planned(0)
    refused = "batch of step 0 from party 'bank': not the 50 rows the run's schedule"
    for rows in ([1] * 40, list(range(31)), list(range(60, 101)), plan[::-1], plan[:-1]):
        with pytest.raises(LrError, match=refused):
            blob = np.array(rows, dtype="<u4").tobytes()
            send("bank", "bureau", LrBatch(run=RUN, sender="bank", step=0, rows=blob))
    with pytest.raises(LrError, match="step 0 from party 'bank' before its batch"):
        send("bank", "bureau", LrExchange(run=RUN, sender="bank", step=0, residual=b"", masked=b""))


def test_a_residual_count_or_ciphertext_that_does_not_fit_is_refused_naming_the_party() -> None:
    X, y = _data(100)
    active, passive, wire, send = _parties(X, y)
    active.exchange_keys(send)
    rows = passive.planned(0).astype("<u4").tobytes()
    send("bank", "bureau", LrBatch(run=RUN, sender="bank", step=0, rows=rows))
    cts = he.encrypt_many(KEYS_A, [1, 2, 3])
    short = LrExchange(
        run=RUN, sender="bank", step=0, residual=he.to_bytes(KEYS_A.public, cts), masked=b""
    )
    with pytest.raises(
        LrError, match="residuals of step 0 from party 'bank': 3 ciphertexts, expected 50"
    ):
        send("bank", "bureau", short)
    width = KEYS_A.public.ciphertext_bytes
    bad = LrExchange(run=RUN, sender="bank", step=0, residual=bytes(50 * width), masked=b"")
    with pytest.raises(he.HeError, match="party 'bank'"):
        send("bank", "bureau", bad)


def test_parameters_out_of_range_are_refused() -> None:
    for rows in (4096, 31):
        with pytest.raises(ValueError, match="batch_rows must be 32..2048"):
            LrParams(batch_rows=rows)
    with pytest.raises(LrError, match="'bank': 31 aligned rows; .* at least 32"):
        X, y = _data(31)
        LrActive("bank", RUN, X[:, :2], y, "bureau", 4, PARAMS, KEYS_A)


def test_an_epoch_has_near_equal_batches_none_short() -> None:
    from silos.vertical.logreg import batches

    sizes = [len(b) for b in batches(1025, LrParams(batch_rows=1024), 0)]
    assert sizes == [513, 512]  # not 1024 and a last batch of 1 row
    assert sorted(np.concatenate(batches(1025, LrParams(batch_rows=1024), 0))) == list(range(1025))
    with pytest.raises(ValueError, match="learning_rate > 0"):
        LrParams(learning_rate=0)


def test_the_first_gradient_is_not_a_subset_sum_over_the_labels() -> None:
    """From zero weights the first residuals would be (2 - 4y) 2^24 exactly, and the passive
    party's first gradient a subset sum of its own columns over the labels (solvable for 32
    rows). The active party starts from secret random weights instead, recorded in its half."""
    X, y = _data(64)
    params = LrParams(epochs=1, batch_rows=32, seed=1)
    active, passive, wire, send = _parties(X, y, params=params)
    other, *_ = _parties(X, y, params=params)
    assert not np.array_equal(active.w0, other.w0) and np.abs(active.w0).min() > 0
    assert np.array_equal(active.half.to_dict("bank")["initial_weights"], active.w0)
    active.exchange_keys(send)
    rows = passive.planned(0)
    active.step(send, rows)
    xq = passive.xq[rows]
    label_sum = xq.T @ ((2 - 4 * y[rows]) << 24)
    # the gradient the passive party stepped with, read back from its weights
    G = -passive.w * (1 << 40) * 4 * len(rows) / params.learning_rate
    assert np.abs(G - label_sum).max() > 1e6 * len(rows)


def test_each_step_is_answered_once_in_order_and_none_beyond_the_run() -> None:
    X, y = _data(100)
    params = LrParams(epochs=1, batch_rows=50, seed=2)
    active, passive, wire, send = _parties(X, y, params=params)
    active.exchange_keys(send)
    with pytest.raises(LrError, match="party 'bank' asked for scores after 0 of the run's 2"):
        send("bank", "bureau", LrPredictRequest(run=RUN, sender="bank", n_rows=100))
    refused: list[str] = []

    def twice(sender: str, recipient: str, msg: VerticalMessage) -> VerticalMessage:
        """Sends a batch or an exchange again after its answer: the replay is refused."""
        reply = send(sender, recipient, msg)
        if isinstance(msg, (LrBatch, LrExchange)):
            with pytest.raises(LrError) as err:
                send(sender, recipient, msg)
            refused.append(str(err.value))
        return reply

    active.step(twice, passive.planned(0))
    assert [r.split(": ", 1)[1] for r in refused] == [
        "party 'bank' opened step 0; step 0 is open",
        "exchange of step 0 from party 'bank' after its exchange",
    ]
    active.step(send, passive.planned(1))
    assert passive.steps == passive.total_steps == 2
    rows = passive.planned(0).astype("<u4").tobytes()
    with pytest.raises(LrError, match="opened step 2; the run's 2 steps are done"):
        send("bank", "bureau", LrBatch(run=RUN, sender="bank", step=2, rows=rows))
    passive.set_predict_rows(X[:, 2:])
    assert len(active.predict_margin(X[:, :2], send)) == 100  # trained: now it predicts


def test_a_key_with_a_degenerate_hs_or_of_the_wrong_size_is_refused_naming_the_sender() -> None:
    n = KEYS_A.public.n
    width = (n.bit_length() + 7) // 8
    good = he.key_message(RUN, "bank", KEYS_A.public)
    assert he.peer_public_key(good.n, good.hs, "bureau", "bank", 2048).n == n
    for hs in (1, n * n - 1, n, 0):  # order 1 or 2, not a unit, zero
        blob = hs.to_bytes(2 * width, "big")
        with pytest.raises(he.HeError, match="'bureau' refused the key of party 'bank'"):
            he.peer_public_key(good.n, blob, "bureau", "bank", 2048)
    big = (n << 60) | 1  # a larger key would not fit the run's fixed-width ciphertexts
    with pytest.raises(he.HeError, match="not a 2048-bit Paillier key"):
        he.peer_public_key(big.to_bytes(width + 8, "big"), good.hs, "bureau", "bank", 2048)


def test_masks_take_no_randomness_from_the_key_owners_hs() -> None:
    """With hs = 1 the DJN shortcut hs^a would leave a mask's ciphertext 1 + m n: its owner
    would read the randomness of the inner product it masks."""
    weak = he.PublicKey(KEYS_A.public.n, 1)
    cts = he.encrypt_public(weak, [5, 5])
    n = weak.n
    assert cts[0] != cts[1] and all(c != (1 + 5 * n) % weak.nsquare for c in cts)
    assert he.decrypt_many(KEYS_A, cts) == [5, 5]


def test_an_opened_gradient_beyond_any_batch_is_refused_naming_the_sender() -> None:
    X, y = _data(100)
    active, passive, wire, send = _parties(X, y)
    n = KEYS_P.public.n

    def lying(sender: str, recipient: str, msg: VerticalMessage) -> VerticalMessage:
        reply = send(sender, recipient, msg)
        if not isinstance(reply, LrExchangeReply):
            return reply
        huge = [(n // 3).to_bytes((n.bit_length() + 7) // 8, "big")] * 3
        return reply.model_copy(update={"opened": b"".join(huge)})

    active.exchange_keys(send)
    with pytest.raises(LrError, match="opened gradient of step 0 from party 'bureau': a grad"):
        active.step(lying, passive.planned(0))
    assert active.steps == 0 and np.array_equal(active.w, active.w0)  # nothing was applied


def test_a_learning_rate_times_l2_of_2_or_more_is_refused() -> None:
    from schemas.vertical import VerticalParams, VerticalRunCreate

    with pytest.raises(ValueError, match="learning_rate x l2 must be below 2, not 4"):
        LrParams(learning_rate=2, l2=2)
    params = VerticalParams(model="logreg", learning_rate=10, l2=0.5)
    with pytest.raises(ValueError, match="learning_rate x l2 must be below 2"):
        VerticalRunCreate(federation="f", active="a", parties=["a", "b"], params=params)
    secureboost = VerticalParams(learning_rate=10, l2=0.5)  # unused by SecureBoost
    VerticalRunCreate(federation="f", active="a", parties=["a", "b"], params=secureboost)


def test_batches_too_small_for_the_readers_columns_are_refused_by_both_parties() -> None:
    X, y = _data(128)
    params = LrParams(epochs=1, batch_rows=32, seed=0)
    with pytest.raises(LrError, match="'bank': batches of 32 rows are under 4 rows for each of "
                       "party 'bureau''s 9 gradient columns"):  # fmt: skip
        LrActive("bank", RUN, X[:, :2], y, "bureau", 9, params, KEYS_A)
    wide = np.hstack([X[:, :2], np.random.default_rng(0).normal(size=(128, 7))])  # 9 + 1
    active = LrActive("bank", RUN, wide, y, "bureau", 4, params, KEYS_A)
    passive = LrPassive("bureau", RUN, X[:, 2:], params=params, keys=KEYS_P)
    send = request_reply(LocalWire(channels(RUN, ["bank", "bureau"])), {"bureau": passive})
    active.exchange_keys(send)
    with pytest.raises(LrError, match="'bureau': batches of 32 rows are under 4 rows for each "
                       "of party 'bank''s 10 gradient columns"):  # fmt: skip
        active.step(send, passive.planned(0))
    assert passive.steps == 0 and not passive.w.any()


def test_batches_partition_the_rows_none_under_the_minimum() -> None:
    from silos.vertical.logreg import MIN_BATCH, batches

    assert [len(b) for b in batches(50, LrParams(batch_rows=32), 0)] == [50]
    for n in range(MIN_BATCH, 400, 7):
        for batch_rows in (32, 33, 50, 64, 100):
            got = batches(n, LrParams(batch_rows=batch_rows), 1)
            sizes = [len(b) for b in got]
            assert min(sizes) >= MIN_BATCH and max(sizes) - min(sizes) <= 1
            assert max(sizes) <= max(batch_rows, 2 * MIN_BATCH - 1)
            assert sorted(np.concatenate(got)) == list(range(n))
