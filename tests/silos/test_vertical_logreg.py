"""Vertical logistic regression: the federated weights equal the same integer arithmetic on
pooled columns, the passive party sees no label, residual or gradient in the clear, and
malformed or out-of-order messages are refused naming the party."""

from __future__ import annotations

import numpy as np
import pytest

from schemas.task_metrics import roc_auc
from schemas.vertical import LrBatch, LrExchange, LrOpened
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
    wa, wp = fit_plain(X[:, :2], X[:, 2:], y, PARAMS)
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
    e = label_part(scores(active.xq[rows], np.zeros(3)), y[rows])
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
    refused = "from party 'bank': {} rows; a batch is 32..2048 distinct aligned rows below 100"
    for rows in ([1] * 40, list(range(31)), list(range(60, 101))):  # twice, too few, too far
        with pytest.raises(LrError, match=refused.format(len(rows))):
            blob = np.array(rows, dtype="<u4").tobytes()
            send("bank", "bureau", LrBatch(run=RUN, sender="bank", step=0, rows=blob))
    with pytest.raises(LrError, match="step 0 from party 'bank' before its batch"):
        send("bank", "bureau", LrExchange(run=RUN, sender="bank", step=0, residual=b"", masked=b""))


def test_a_residual_count_or_ciphertext_that_does_not_fit_is_refused_naming_the_party() -> None:
    X, y = _data(100)
    active, passive, wire, send = _parties(X, y)
    active.exchange_keys(send)
    rows = np.arange(40, dtype="<u4").tobytes()
    send("bank", "bureau", LrBatch(run=RUN, sender="bank", step=0, rows=rows))
    cts = he.encrypt_many(KEYS_A, [1, 2, 3])
    short = LrExchange(
        run=RUN, sender="bank", step=0, residual=he.to_bytes(KEYS_A.public, cts), masked=b""
    )
    with pytest.raises(
        LrError, match="residuals of step 0 from party 'bank': 3 ciphertexts, expected 40"
    ):
        send("bank", "bureau", short)
    width = KEYS_A.public.ciphertext_bytes
    bad = LrExchange(run=RUN, sender="bank", step=0, residual=bytes(40 * width), masked=b"")
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
