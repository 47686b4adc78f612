"""A list of binary messages as one ``application/octet-stream`` body.

Format: 4-byte big-endian frame count, then per frame a 4-byte big-endian length and the bytes.
`unpack_frames` refuses anything that does not add up exactly (count, lengths, trailing bytes)
and bounds the count, so a hostile body cannot make the reader allocate without limit.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

MAX_FRAMES = 100_000


class FrameError(ValueError):
    """A framed body is malformed."""


def pack_frames(frames: Sequence[bytes]) -> bytes:
    """Concatenate `frames` with their count and lengths."""
    if len(frames) > MAX_FRAMES:
        raise FrameError(f"{len(frames)} frames; at most {MAX_FRAMES} fit one body")
    parts = [struct.pack(">I", len(frames))]
    for f in frames:
        parts.append(struct.pack(">I", len(f)))
        parts.append(bytes(f))
    return b"".join(parts)


def unpack_frames(body: bytes) -> list[bytes]:
    """The frames of a body made by `pack_frames` (FrameError naming what does not add up)."""
    if len(body) < 4:
        raise FrameError(f"a framed body starts with a 4-byte count; got {len(body)} bytes")
    (count,) = struct.unpack_from(">I", body, 0)
    if count > MAX_FRAMES:
        raise FrameError(f"body claims {count} frames; at most {MAX_FRAMES} are accepted")
    out: list[bytes] = []
    pos = 4
    for i in range(count):
        if pos + 4 > len(body):
            raise FrameError(f"body ends inside the length of frame {i} of {count}")
        (n,) = struct.unpack_from(">I", body, pos)
        pos += 4
        if pos + n > len(body):
            raise FrameError(f"frame {i} claims {n} bytes; only {len(body) - pos} remain")
        out.append(body[pos : pos + n])
        pos += n
    if pos != len(body):
        raise FrameError(f"{len(body) - pos} bytes after the last of {count} frames")
    return out
