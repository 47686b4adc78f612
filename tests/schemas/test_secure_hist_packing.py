"""Masked secure-hist vectors at their bit widths (`schemas.secure_hist.packing`): packing is
lossless, masked sums mod 2^b read back exactly within the bound, an entry outside its width is
refused, and a whole run gives the bit-identical model on fewer bytes than the 64-bit wire."""

from __future__ import annotations

import dataclasses
import os

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from support.secure_hist_driver import run_secure_hist

from aggregation.trees.secure_hist.cuts import cuts_from_setup
from schemas.secagg.crypto import generate_identity
from schemas.secagg.session_messages import SessionMasked
from schemas.secure_hist import packing
from schemas.secure_hist.errors import HistConfigError, HistVectorError
from schemas.secure_hist.protocol import STATS, HistRunConfig, to_modular
from schemas.tree_params import XGBoostParams

U64 = 2**64


@st.composite
def widths_and_values(draw: st.DrawFn) -> tuple[packing.Widths, np.ndarray]:
    bits = draw(st.lists(st.integers(1, 64), min_size=0, max_size=200))
    values = [draw(st.integers(0, 2**b - 1)) for b in bits]
    signed = draw(st.lists(st.booleans(), min_size=len(bits), max_size=len(bits)))
    widths = packing.Widths(np.array(bits, dtype=np.uint64), np.array(signed, dtype=bool))
    return widths, np.array(values, dtype=np.uint64)


@given(widths_and_values())
@settings(max_examples=300, deadline=None)
def test_pack_unpack_round_trips_at_whole_bytes(case: tuple[packing.Widths, np.ndarray]) -> None:
    widths, values = case
    raw = packing.pack(values, widths)
    assert len(raw) == (sum(int(b) for b in widths.bits) + 7) // 8
    assert packing.unpack(raw, widths).tolist() == values.tolist()


@st.composite
def silo_vectors(draw: st.DrawFn) -> tuple[packing.Widths, list[list[int]]]:
    """k silos' entries, each entry's sum within its width's (signed or unsigned) range."""
    k = draw(st.integers(2, 6))
    entries = draw(st.integers(1, 40))
    bits = [draw(st.integers(2, 64)) for _ in range(entries)]
    signed = [draw(st.booleans()) for _ in range(entries)]
    columns = []
    for b, s in zip(bits, signed, strict=True):
        lo, hi = (-(2 ** (b - 1)), 2 ** (b - 1) - 1) if s else (0, 2**b - 1)
        if b == 64:  # the legacy width carries any int64 sum
            lo, hi = -(2**63), 2**63 - 1
        # k parts of one total within [lo, hi]: the total's bound holds, each part obeys it
        total = draw(st.integers(lo, hi))
        cuts = sorted(draw(st.integers(0, abs(total))) for _ in range(k - 1))
        sign = -1 if total < 0 else 1
        parts = [sign * (b - a) for a, b in zip([0, *cuts], [*cuts, abs(total)], strict=True)]
        assert sum(parts) == total and all(lo <= p <= hi for p in parts)
        columns.append(parts)
    widths = packing.Widths(np.array(bits, dtype=np.uint64), np.array(signed, dtype=bool))
    return widths, [[c[i] for c in columns] for i in range(k)]


@given(silo_vectors())
@settings(max_examples=300, deadline=None)
def test_masked_sum_mod_2b_equals_the_plain_sum(
    case: tuple[packing.Widths, list[list[int]]],
) -> None:
    """fit -> mask mod 2^64 -> pack low bits -> unpack -> sum -> unmask -> widen == plain sum."""
    widths, silos = case
    k, n = len(silos), widths.size
    masks = [np.frombuffer(os.urandom(8 * n), dtype="<u8") for _ in range(k - 1)]
    masks.append(np.asarray(-np.sum(masks, axis=0, dtype=np.uint64)))  # they cancel mod 2^64
    total = np.zeros(n, dtype=np.uint64)
    for values, mask in zip(silos, masks, strict=True):
        x = packing.fit(np.array(values, dtype=np.int64).view("<u8"), widths)
        sent = packing.unpack(packing.pack(x + mask, widths), widths)
        assert (sent <= widths.masks()).all()  # only the low b bits left the silo
        total += sent
    exact = packing.widen(total, widths).view(np.int64)
    assert exact.tolist() == [sum(col) for col in zip(*silos, strict=True)]


@pytest.mark.parametrize(
    ("bits", "signed", "value"),
    [(8, True, 128), (8, True, -129), (8, False, 256), (8, False, -1), (1, False, 2)],
)
def test_an_entry_outside_its_width_is_refused_not_wrapped(
    bits: int, signed: bool, value: int
) -> None:
    widths = packing.Widths(np.array([64, bits], dtype=np.uint64), np.array([True, signed]))
    x = np.array([0, value], dtype=np.int64).view("<u8")
    with pytest.raises(HistVectorError, match=r"bank-a, tree 3\] entry 1 = -?\d+ does not fit"):
        packing.fit(x, widths, {"silo": "bank-a", "tree": 3})
    if signed:  # the nearest edge inside the width fits, and reduces to its low bits
        edge = 2 ** (bits - 1) - 1 if value > 0 else -(2 ** (bits - 1))
    else:
        edge = 2**bits - 1 if value > 0 else 0
    inside = np.array([0, edge], dtype=np.int64).view("<u8")
    assert packing.fit(inside, widths).tolist()[1] == edge % 2**bits


@given(st.integers(1, 63), st.booleans(), st.integers(-(2**63), 2**63 - 1))
@settings(max_examples=500, deadline=None)
def test_fit_accepts_exactly_the_values_in_range(bits: int, signed: bool, value: int) -> None:
    lo, hi = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)
    widths = packing.Widths(np.array([bits], dtype=np.uint64), np.array([signed]))
    x = np.array([value], dtype=np.int64).view("<u8")
    if lo <= value <= hi:
        assert packing.fit(x, widths).tolist() == [value % 2**bits]
    else:
        with pytest.raises(HistVectorError, match="does not fit"):
            packing.fit(x, widths)


def _config(**kw: object) -> HistRunConfig:
    params = XGBoostParams(max_depth=3, eta=0.3, max_bin=16)
    return HistRunConfig("binary:logistic", params, 2, ((-3.0, 3.0),) * 3, fine_cells=64, **kw)  # type: ignore[arg-type]


def test_level_widths_hold_the_extremes_of_n_rows_and_no_more() -> None:
    cfg, total, n = _config(), 10, 1000
    widths = packing.level_widths(cfg, total, [n])
    assert widths.size == STATS * total
    qg, qh = packing.row_bounds(cfg)
    assert qg == 2**cfg.codec.scale_bits and qh == 2 ** (cfg.codec.scale_bits - 2)
    worst = np.concatenate([np.full(total, -n * qg), np.full(total, n * qh), np.full(total, n)])
    packing.fit(to_modular(worst.astype(np.float64)), widths)
    packing.fit(to_modular(np.abs(worst).astype(np.float64)), widths)
    g, h, c = (int(widths.bits[i * total]) for i in range(STATS))
    assert (g, h, c) == ((n * qg).bit_length() + 1, (n * qh).bit_length(), n.bit_length())
    assert 2 ** (c - 1) <= n < 2**c  # counts: no bit to spare
    legacy = packing.level_widths(_config(packed=False), total, [n])
    assert (legacy.bits == 64).all() and legacy.packed_bytes == 8 * STATS * total


def test_a_federation_over_max_rows_is_refused_at_setup() -> None:
    cfg = _config(max_rows=100)
    setup = np.zeros(cfg.setup_length())
    setup[cfg.n_features * (cfg.fine_cells + 1)] = 101
    with pytest.raises(HistConfigError, match="101 training rows, over the run's max_rows 100"):
        cuts_from_setup(to_modular(setup), cfg)


def test_frames_carry_the_signature_of_the_reduced_vector() -> None:
    widths = packing.Widths(np.array([5, 40, 64], dtype=np.uint64), np.array([False, True, True]))
    identity = generate_identity()
    masked = SessionMasked.create(
        identity, run_id="r", round_num=3, silo="a", b_commitment=b"c" * 32,
        ciphertexts={"b": b"x"}, vector=np.array([U64 - 1, U64 - 2, 7], dtype="<u8"),
    )  # fmt: skip
    raw = packing.seal_masked(masked, widths, identity)
    assert len(raw) < len(masked.to_bytes())
    back = packing.open_masked(raw, widths)
    assert back.vector.tolist() == [31, 2**40 - 2, 7]
    assert packing.masked_head(raw).round_num == 3
    assert dataclasses.replace(back, signature=b"") != back  # signed, and over this vector:
    resigned = SessionMasked.create(identity, **{
        f.name: getattr(back, f.name) for f in dataclasses.fields(back) if f.name != "signature"
    })  # fmt: skip
    assert resigned.signature == back.signature  # Ed25519 is deterministic
    with pytest.raises(HistVectorError, match="packed vector has"):
        packing.open_masked(raw[:-1], widths)
    with pytest.raises(HistVectorError, match="expected a packed secure-hist vector"):
        packing.open_masked(masked.to_bytes(), widths)


def test_packed_run_gives_the_bit_identical_model_on_fewer_bytes() -> None:
    rng = np.random.default_rng(7)
    X = rng.normal(size=(6000, 4)).astype(np.float32)
    y = (X[:, 0] + 0.5 * X[:, 1] ** 2 + rng.normal(scale=0.5, size=6000) > 0.5).astype(float)
    data = {f"s{i}": (X[i::3], y[i::3]) for i in range(3)}
    params = XGBoostParams(max_depth=4, eta=0.3, max_bin=32)
    cfg = HistRunConfig("binary:logistic", params, 4, ((-5.0, 5.0),) * 4, fine_cells=256)
    packed = run_secure_hist(cfg, data)
    legacy = run_secure_hist(dataclasses.replace(cfg, packed=False), data)
    assert packed.model == legacy.model
    # the packed run first sums the rows (one entry), which bounds the setup's counts
    assert packed.aggregations == legacy.aggregations + 1
    for silo in data:
        assert packed.bytes_sent[silo] * 1.5 < legacy.bytes_sent[silo], silo


def test_a_cut_short_frame_header_is_refused_as_a_format_error() -> None:
    """A frame too short for its header length used to raise struct.error (a 500)."""
    for raw in (packing.MAGIC, packing.MAGIC + b"\0\0\0"):
        with pytest.raises(HistVectorError, match="cut short"):
            packing.masked_head(raw)
