"""Framed octet-stream bodies: what is packed unpacks unchanged; anything else is refused."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from schemas.frames import MAX_FRAMES, FrameError, pack_frames, unpack_frames

FRAMES = st.lists(st.binary(max_size=64), max_size=12)


@given(FRAMES)
def test_pack_then_unpack_is_the_identity(frames: list[bytes]) -> None:
    assert unpack_frames(pack_frames(frames)) == frames


@given(FRAMES, st.data())
def test_any_truncation_is_refused(frames: list[bytes], data: st.DataObject) -> None:
    body = pack_frames(frames)
    cut = data.draw(st.integers(min_value=0, max_value=len(body) - 1), label="cut")
    with pytest.raises(FrameError):
        unpack_frames(body[:cut])


@given(FRAMES, st.binary(min_size=1, max_size=8))
def test_trailing_bytes_are_refused(frames: list[bytes], extra: bytes) -> None:
    with pytest.raises(FrameError, match="after the last"):
        unpack_frames(pack_frames(frames) + extra)


def test_a_count_over_the_bound_is_refused_before_reading_on() -> None:
    with pytest.raises(FrameError, match="at most"):
        unpack_frames(struct.pack(">I", MAX_FRAMES + 1))


def test_a_frame_longer_than_the_body_is_refused() -> None:
    body = struct.pack(">II", 1, 1_000) + b"short"
    with pytest.raises(FrameError, match="claims 1000 bytes"):
        unpack_frames(body)
