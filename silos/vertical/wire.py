"""An in-process relay between the parties of a vertical run (tests and benchmarks).

It does what the service relay will do, minus HTTP: each message is sealed by the sender's
`Channel`, carried as opaque bytes, opened by the recipient's `Channel`. It counts the bytes
on every direction and keeps each party's received frames, so tests can inspect exactly what
a party was sent.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field

from pydantic import BaseModel

from schemas.vertical import VerticalMessage
from silos.vertical.channel import Channel


@dataclass
class LocalWire:
    channels: dict[str, Channel]
    keep_frames: bool = False
    bytes_sent: dict[tuple[str, str], int] = field(default_factory=lambda: defaultdict(int))
    frames: dict[str, list[bytes]] = field(default_factory=lambda: defaultdict(list))
    opened: dict[str, list[VerticalMessage]] = field(default_factory=lambda: defaultdict(list))
    tamper: dict[str, Callable[[bytes], bytes]] = field(
        default_factory=dict
    )  # tests: recipient -> callable

    def deliver(self, sender: str, recipient: str, message: BaseModel) -> VerticalMessage:
        data = self.channels[sender].seal(recipient, message)
        if recipient in self.tamper:
            data = self.tamper[recipient](data)
        self.bytes_sent[(sender, recipient)] += len(data)
        if self.keep_frames:
            self.frames[recipient].append(data)
        message_in = self.channels[recipient].open(data)
        if self.keep_frames:
            self.opened[recipient].append(message_in)
        return message_in

    def total(self, sender: str, recipient: str) -> int:
        return self.bytes_sent.get((sender, recipient), 0)
