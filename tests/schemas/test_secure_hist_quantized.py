"""Fewer bits a secure-hist run: quantized gradients (`HistRunConfig.grad_bits`), whose
stochastic rounding stays inside the wire's bounds, is unbiased and leaves the lossless default
and the label sum alone; and setup counts as wide as the federation's counted rows."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas.secure_hist import packing
from schemas.secure_hist.errors import HistConfigError
from schemas.secure_hist.protocol import GradCodec, HistRunConfig, scale_bits_for
from schemas.tree_params import XGBoostParams

CFG = HistRunConfig(
    "binary:logistic", XGBoostParams(max_bin=8), 2, ((0.0, 1.0),) * 3, fine_cells=16
)


@settings(max_examples=60, deadline=None)
@given(
    bits=st.integers(1, 30),
    bound=st.sampled_from([1.0, 2.5, 7.0]),
    values=st.lists(st.floats(-50, 50, allow_nan=False), min_size=1, max_size=40),
    seed=st.integers(0, 2**32 - 1),
)
def test_stochastic_rounding_is_a_neighbour_within_the_row_bound(
    bits: int, bound: float, values: list[float], seed: int
) -> None:
    codec = GradCodec(bits, bound, stochastic=True)
    v = np.array(values)
    q = codec.encode(v, np.random.default_rng(seed))
    exact = np.clip(v, -bound, bound) * codec.scale
    assert np.array_equal(q, np.round(q))  # integers
    assert np.all((q == np.floor(exact)) | (q == np.ceil(exact)))
    # the per-row bound `packing` sizes the wire by
    assert np.all(np.abs(q) <= math.ceil(bound * codec.scale))


def test_stochastic_rounding_is_unbiased_where_rounding_to_nearest_is_not() -> None:
    codec = GradCodec(3, 1.0, stochastic=True)
    h = np.full(200_000, 0.01)  # 0.08 of a step: rounding to nearest always gives 0
    q = codec.encode(h, np.random.default_rng(7))
    assert GradCodec(3, 1.0).encode(h).sum() == 0
    assert q.sum() / codec.scale == pytest.approx(h.sum(), rel=0.02)


def test_a_value_on_the_grid_is_never_rounded_past_it() -> None:
    """floor(x + u) would round 2^40 + 0.99993... up to 2^40 + 1 in float64 about once in
    8,000 draws, past the wire's per-row bound; the codec must not."""
    codec = GradCodec(40, 1.0, stochastic=True)
    q = codec.encode(np.full(100_000, 1.0), np.random.default_rng(3))
    assert np.all(q == 2.0**40)


def test_a_stochastic_codec_needs_a_generator() -> None:
    with pytest.raises(ValueError, match="random generator"):
        GradCodec(3, 1.0, stochastic=True).encode(np.zeros(2))


def test_the_default_stays_lossless_and_rounds_to_nearest() -> None:
    lossless = scale_bits_for(CFG.max_rows, CFG.grad_bound)
    assert CFG.grad_bits is None
    assert CFG.codec == GradCodec(lossless, 1.0) and not CFG.codec.stochastic
    q = replace(CFG, grad_bits=4)
    assert q.codec == GradCodec(4, 1.0, stochastic=True)
    # the setup vector's label sum keeps the lossless precision either way
    assert q.label_codec == CFG.label_codec == CFG.codec


def test_grad_bits_is_bounded_by_the_exact_range() -> None:
    lossless = scale_bits_for(CFG.max_rows, CFG.grad_bound)
    assert replace(CFG, grad_bits=lossless).codec.scale_bits == lossless
    for bad in (0, lossless + 1):
        with pytest.raises(HistConfigError, match=f"grad_bits {bad} must be in"):
            replace(CFG, grad_bits=bad)


def test_grad_bits_round_trips_through_the_stored_config() -> None:
    q = replace(CFG, grad_bits=3)
    assert HistRunConfig.from_dict(q.to_dict()) == q
    old = CFG.to_dict()
    del old["grad_bits"]  # a config stored before the field existed
    assert HistRunConfig.from_dict(old).grad_bits is None


def test_quantized_cells_need_fewer_bits() -> None:
    rows = [100_000, 3_000]
    lossless = packing.level_widths(CFG, 10, rows)
    quantized = packing.level_widths(replace(CFG, grad_bits=2), 10, rows)
    assert quantized.packed_bytes < lossless.packed_bytes
    # a 100,000-row node at S = 2: gradients 2^2 * n -> 19 + 1 bits, hessians n -> 17 bits
    assert quantized.bits[:10].tolist() == [20] * 10
    assert quantized.bits[10:20].tolist() == [17] * 10
    assert quantized.bits[20:30].tolist() == [17] * 10  # counts unchanged


def test_the_setup_counts_take_the_width_of_the_counted_rows() -> None:
    cells = CFG.n_features * (CFG.fine_cells + 1)
    assert packing.setup_widths(CFG).bits[:cells].tolist() == [29] * cells  # max_rows 2^28
    counted = packing.setup_widths(CFG, 22_500)
    assert counted.bits[:cells].tolist() == [15] * cells
    assert counted.bits[cells:].tolist() == [64] * (1 + CFG.label_stats)  # rows, labels
    # never wider than max_rows allows, and the 64-bit legacy wire ignores the count
    assert packing.setup_widths(CFG, 2**40).bits[:cells].tolist() == [29] * cells
    assert packing.setup_widths(replace(CFG, packed=False), 22_500).bits.tolist() == [64] * (
        cells + 1 + CFG.label_stats
    )
