"""A party's end of a vertical run over the service relay: what `LocalWire` does in process,
over signed HTTP (aggregation/service/routes/vertical.py).

`send` seals a message for one peer and posts the frame; `receive` long-polls this party's
inbox, opens every envelope with the party's `Channel` (a tampered or foreign one raises
`ChannelError` naming the sender) and hands back the next message from the peer asked for,
keeping the others queued in arrival order. `None` means the run is over.
"""

from __future__ import annotations

import time
from collections import defaultdict, deque
from dataclasses import dataclass, field

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from pydantic import BaseModel

from schemas.frames import unpack_frames
from schemas.url_path import seg
from schemas.vertical import VerticalMessage, VerticalRunOut
from silos.client import SiloClient
from silos.vertical.channel import Channel, public_bytes

LAST_HEADER = "X-Fedsilo-Vertical-Last"
STATUS_HEADER = "X-Fedsilo-Vertical-Status"
POLL_S = 20.0


class RunOver(RuntimeError):
    """The run ended (finished or failed) while this party waited for a message."""


def base(run: str) -> str:
    return f"/v1/silo/vertical/{seg(run)}"


def run_info(client: SiloClient, run: str) -> VerticalRunOut:
    return VerticalRunOut.model_validate_json(client.request("GET", base(run)).content)


def open_channel(client: SiloClient, run: str, timeout_s: float = 300.0) -> Channel:
    """A fresh X25519 key for this run, its public half to the relay, and every peer's."""
    info = run_info(client, run)
    key = X25519PrivateKey.generate()
    client.request("PUT", base(run) + "/key", body=public_bytes(key))
    deadline = time.monotonic() + timeout_s
    delay = 0.05
    while True:
        got = client.request("GET", base(run) + "/keys").json()
        if set(got) >= set(info.parties):
            break
        status = run_info(client, run).status
        if status != "running":  # a peer failed before it gave its key
            raise RunOver(f"vertical run {run} is {status} before every party gave its key")
        if time.monotonic() > deadline:
            missing = sorted(set(info.parties) - set(got))
            raise TimeoutError(f"vertical run {run}: parties {missing} gave no key in {timeout_s}s")
        time.sleep(delay)  # peers start when they start: back off up to a second
        delay = min(1.0, delay * 2)
    peers = {p: bytes.fromhex(k) for p, k in got.items() if p != client.silo}
    return Channel(run, client.silo, key, peers)


@dataclass
class HttpWire:
    client: SiloClient
    channel: Channel
    after: int = 0
    status: str = "running"
    bytes_sent: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    bytes_received: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    _queue: dict[str, deque[VerticalMessage]] = field(default_factory=lambda: defaultdict(deque))

    @property
    def run(self) -> str:
        return self.channel.run

    def send(self, recipient: str, message: BaseModel) -> None:
        data = self.channel.seal(recipient, message)
        self.bytes_sent[recipient] += len(data)
        self.client.request("POST", base(self.run) + "/envelopes", body=data)

    def _fetch(self, wait_s: float) -> None:
        resp = self.client.request(
            "GET", f"{base(self.run)}/inbox?after={self.after}&wait={wait_s:g}", timeout=wait_s + 30
        )
        self.status = resp.headers.get(STATUS_HEADER, self.status)
        self.after = int(resp.headers.get(LAST_HEADER, self.after))
        if resp.status_code == 204:
            return
        for data in unpack_frames(resp.content):
            message = self.channel.open(data)  # ChannelError names the sender
            self.bytes_received[message.sender] += len(data)
            self._queue[message.sender].append(message)

    def receive(self, sender: str | None = None) -> VerticalMessage:
        """The next message from `sender` (any peer when None); RunOver once the run ended."""
        while True:
            for peer, queue in self._queue.items():
                if queue and (sender is None or peer == sender):
                    return queue.popleft()
            if self.status != "running":
                raise RunOver(f"vertical run {self.run} is {self.status}")
            self._fetch(POLL_S)

    def requeue(self, message: VerticalMessage) -> None:
        """Put a message back at the front of its sender's queue (read by the wrong step)."""
        self._queue[message.sender].appendleft(message)

    def request(self, recipient: str, message: BaseModel) -> VerticalMessage:
        self.send(recipient, message)
        return self.receive(recipient)
