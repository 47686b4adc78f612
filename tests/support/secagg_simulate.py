"""Run every stage of a round in one process, through the byte-level wire format.

This is the same code the silos and the service run, wired by direct calls instead of HTTP and
a database mailbox: every message is serialized with ``to_bytes`` and parsed back with
``from_bytes`` on the way, as the relay would. Tests, the benchmark and the demo use it to
show what the service sees (masked vectors and the sum, nothing else).
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from typing import TypeVar

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from aggregation.secagg import server
from schemas.secagg.config import RoundConfig
from schemas.secagg.crypto import identity_public_bytes
from schemas.secagg.messages import Message
from silos.secagg import client

T = TypeVar("T")
M = TypeVar("M", bound=Message)


@dataclass
class RoundReport:
    """Outcome and costs of a simulated round.

    Attributes
    ----------
    total
        Unmasked sum of the survivors' quantized vectors (mod 2^k).
    survivors, dropped
        U3 and U2 \\ U3.
    client_seconds
        Per silo, seconds spent in each stage's client function.
    server_seconds
        Seconds per server stage; "unmask" covers request building, share checks and finalize.
    bytes_sent
        Per silo, bytes of all messages it sent.
    """

    total: np.ndarray
    survivors: tuple[str, ...]
    dropped: tuple[str, ...]
    client_seconds: dict[str, dict[str, float]] = field(default_factory=dict)
    server_seconds: dict[str, float] = field(default_factory=dict)
    bytes_sent: dict[str, int] = field(default_factory=dict)


class _Clock:
    def __init__(self) -> None:
        self.seconds: dict[str, dict[str, float]] = defaultdict(dict)

    def time(self, who: str, stage: str, fn: Callable[..., T], *args: object) -> T:
        start = time.perf_counter()
        out = fn(*args)
        self.seconds[who][stage] = self.seconds[who].get(stage, 0.0) + time.perf_counter() - start
        return out


def run_round(
    config: RoundConfig,
    inputs: Mapping[str, np.ndarray],
    identities: Mapping[str, Ed25519PrivateKey],
    *,
    drop_after_share: Collection[str] = (),
    drop_after_masked: Collection[str] = (),
) -> RoundReport:
    """Run advertise, share, masked input, (consistency), unmask and finalize in process.

    Parameters
    ----------
    config
        Round parameters.
    inputs
        Quantized vector per silo on the roster.
    identities
        Ed25519 identity key per silo.
    drop_after_share
        Silos that vanish after sharing keys (never send a masked input).
    drop_after_masked
        Silos that vanish after sending their masked input (never help unmask).
    """
    roster = {s: identity_public_bytes(k) for s, k in identities.items()}
    clock, sent = _Clock(), defaultdict[str, int](int)

    def wire(msg: M) -> M:  # the relay stores bytes and hands bytes back
        raw = msg.to_bytes()
        sent[msg.silo] += len(raw)
        return type(msg).from_bytes(raw)

    srv = server.ServerState(config, roster)
    states = {}
    for silo in config.silos:
        states[silo], advert = clock.time(
            silo, "advertise", client.advertise_keys, config, silo, identities[silo], roster
        )
        clock.time("server", "advertise", server.receive_advertise, srv, wire(advert))
    adverts = clock.time("server", "advertise", server.close_advertise, srv)
    for silo, state in states.items():
        shared = clock.time(silo, "share", client.share_keys, state, adverts)
        clock.time("server", "share", server.receive_shares, srv, wire(shared))
    deliveries = clock.time("server", "share", server.close_shares, srv)
    live = [s for s in config.silos if s not in drop_after_share]
    for silo in live:
        masked = clock.time(
            silo, "masked", client.masked_input, states[silo], deliveries[silo], inputs[silo]
        )
        clock.time("server", "masked", server.receive_masked, srv, wire(masked))
    survivors = clock.time("server", "masked", server.close_masked, srv)
    helpers = [s for s in survivors if s not in drop_after_masked]
    if config.consistency_check:
        for silo in helpers:
            signed = clock.time(silo, "consistency", client.sign_survivors, states[silo], survivors)
            clock.time("server", "consistency", server.receive_consistency, srv, wire(signed))
    requests = clock.time("server", "unmask", server.unmask_requests, srv)
    for silo in helpers:
        answer = clock.time(silo, "unmask", client.unmask, states[silo], requests[silo])
        clock.time("server", "unmask", server.receive_unmask, srv, wire(answer))
    total = clock.time("server", "unmask", server.finalize, srv)
    server_seconds = clock.seconds.pop("server")
    return RoundReport(
        total, survivors, srv.dropped, dict(clock.seconds), server_seconds, dict(sent)
    )
