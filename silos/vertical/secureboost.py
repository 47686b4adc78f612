"""Vertical SecureBoost end to end over one relay: the entry points a coordinator calls.

`train` and `predict` run the active party's protocol with every message sealed, carried
as bytes and opened (silos/vertical/wire.py in process; the service relay next), each
passive party answering through its `handle`. Lossless: the model equals `fit_plain` on the
same bins (tests/silos/test_vertical_secureboost.py).

What each party learns (as in Cheng et al. 2019 and FATE): the passive parties see only
Paillier ciphertexts of gradients, and every node's instance space (which rows reach it);
the active party learns, per passive feature, the sums of g and h and the row count per bin
(not the bin edges), and at prediction the left/right decision of every passive record for
every row (one round instead of one per tree level). Thresholds never leave their owner.

A passive party answers only what an honest growth of the run's trees asks
(silos/vertical/passive.py): histograms of the instance spaces it derived itself, each node
once, none under `BoostParams.min_child_rows` rows or below max_depth, splits once per node
of the current tree, trees in order up to the run's count, routes only after training; each
histogram ciphertext carries its own fresh randomness (`he.rerandomize`). What it cannot
check: the active party's own splits (it sees a child's rows, not why); such a split can
still pick any subset of at least min_child_rows rows and of the parent, and the active party
learns that subset's bin sums. The active party checks every bin sum against the node's rows
and every passive split against the histogram it came from, and refuses naming the party.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

import numpy as np
from pydantic import BaseModel

from schemas.vertical import VerticalMessage
from silos.vertical.active import ActiveParty, Send
from silos.vertical.passive import PassiveParty
from silos.vertical.trees import Tree
from silos.vertical.wire import LocalWire


class Answers(Protocol):
    def handle(self, msg: VerticalMessage) -> VerticalMessage: ...


def request_reply(wire: LocalWire, passives: Mapping[str, Answers]) -> Send:
    """send(sender, recipient, message) -> the recipient's reply, both ways sealed (any
    passive party that answers each message: SecureBoost's or logistic regression's)."""

    def send(sender: str, recipient: str, message: object) -> VerticalMessage:
        assert isinstance(message, BaseModel)
        got = wire.deliver(sender, recipient, message)
        reply = passives[recipient].handle(got)
        return wire.deliver(recipient, sender, reply)

    return send


def train(active: ActiveParty, passives: dict[str, PassiveParty], wire: LocalWire) -> list[Tree]:
    return active.fit(request_reply(wire, passives))


def predict_proba(
    active: ActiveParty,
    passives: dict[str, PassiveParty],
    wire: LocalWire,
    X_active: np.ndarray,
    X_passive: dict[str, np.ndarray],
) -> np.ndarray:
    """P(y=1) for rows aligned across parties (each party passes its own columns)."""
    for name, party in passives.items():
        party.set_predict_rows(X_passive[name])
    margin = active.predict_margin(X_active, request_reply(wire, passives))
    return 1.0 / (1.0 + np.exp(-margin))
