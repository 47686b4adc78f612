"""The tensor codec: exact round trips, and errors that name what was expected and received."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import array_shapes, arrays

from schemas import tensors
from schemas.exceptions import TensorFormatError

names = st.text("abcdefghij._0123456789", min_size=1, max_size=12)


@settings(max_examples=60, deadline=None)
@given(
    st.dictionaries(
        names,
        arrays(
            st.sampled_from([np.float32, np.float64, np.int64]),
            array_shapes(max_dims=3, max_side=5),
        ),
        min_size=1,
        max_size=5,
    ),
    st.dictionaries(st.text("xyz", min_size=1, max_size=4), st.text(max_size=20), max_size=3),
)
def test_round_trip_is_exact_and_keeps_order(arrs, meta) -> None:  # type: ignore[no-untyped-def]
    payload = tensors.encode(arrs, meta)
    back, back_meta = tensors.decode(payload)
    assert list(back) == list(arrs)
    for name, a in arrs.items():
        assert back[name].dtype == a.dtype and back[name].shape == a.shape
        np.testing.assert_array_equal(back[name], a)
    assert back_meta == meta


def test_decode_expected_checks_names_shapes_dtype() -> None:
    good = tensors.encode({"w": np.zeros((2, 3), np.float32), "b": np.zeros(2, np.float32)})
    arrays_, _ = tensors.decode_expected(good, [("w", (2, 3)), ("b", (2,))])
    assert [a.shape for a in arrays_] == [(2, 3), (2,)]
    with pytest.raises(
        TensorFormatError,
        match=r"expected arrays \[w\[2, 4\], b\[2\]\], received \[w\[2, 3\], b\[2\]\]",
    ):
        tensors.decode_expected(good, [("w", (2, 4)), ("b", (2,))])
    with pytest.raises(TensorFormatError, match="expected 1 arrays"):
        tensors.decode_expected(good, [("w", (2, 3))])
    with pytest.raises(TensorFormatError, match="expected dtype float64"):
        tensors.decode_expected(good, [("w", (2, 3)), ("b", (2,))], np.float64)


def test_non_finite_values_are_named() -> None:
    bad = tensors.encode({"w": np.array([1.0, np.nan], np.float32)})
    with pytest.raises(TensorFormatError, match="array 'w' holds 1 NaN"):
        tensors.decode_expected(bad, [("w", (2,))])


@pytest.mark.parametrize(
    "junk", [b"", b"\x00" * 4, b"\xff" * 16, b"\x05\x00\x00\x00\x00\x00\x00\x00{bad}"]
)
def test_garbage_is_a_format_error(junk: bytes) -> None:
    with pytest.raises(TensorFormatError):
        tensors.decode(junk)


def test_foreign_safetensors_file_is_refused() -> None:
    from safetensors.numpy import save

    foreign = save({"w": np.zeros(2, np.float32)})
    with pytest.raises(TensorFormatError, match="not a fedsilo-tensors payload"):
        tensors.decode(foreign)


def test_reserved_metadata_keys_are_refused() -> None:
    with pytest.raises(ValueError, match="reserved"):
        tensors.encode({"w": np.zeros(1, np.float32)}, {tensors.ORDER_KEY: "x"})


@pytest.mark.parametrize(
    "header",
    [
        b"[" * 100_000 + b"]" * 100_000,  # nested 100k deep: RecursionError in json
        b'{"__metadata__": [1, 2]}',
        b"[1, 2, 3]",
    ],
)
def test_hostile_headers_are_format_errors_not_crashes(header: bytes) -> None:
    payload = len(header).to_bytes(8, "little") + header
    with pytest.raises(TensorFormatError):
        tensors.read_metadata(payload)
