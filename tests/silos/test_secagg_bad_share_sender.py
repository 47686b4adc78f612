"""A share that fails authentication, or decrypts to no valid shares, is refused with an error
that names the silo that sent it: the honest silo's decline carries that error, and the round's
failure reason quotes the declines, so it names the silo at fault."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from aggregation.secagg import server
from schemas.secagg import crypto
from schemas.secagg.config import RoundConfig
from schemas.secagg.crypto import generate_identity, identity_public_bytes
from schemas.secagg.exceptions import DecryptionError, MessageFormatError
from schemas.secagg.messages import EncryptedShare
from silos.secagg import client

SILOS = ("a", "b", "mallory")
IDS = {s: generate_identity() for s in SILOS}
ROSTER = {s: identity_public_bytes(k) for s, k in IDS.items()}
D = 8


def _shared() -> tuple[RoundConfig, dict[str, client.ClientState], dict[str, list[EncryptedShare]]]:
    """A three-silo round (t = 2) through the share stage: the states and each silo's inbox."""
    cfg = RoundConfig("run-x", 3, SILOS, 2, D)
    srv = server.ServerState(cfg, ROSTER)
    states, adverts = {}, []
    for s in SILOS:
        states[s], advert = client.advertise_keys(cfg, s, IDS[s], ROSTER)
        adverts.append(advert)
    for advert in adverts:
        server.receive_advertise(srv, advert)
    relayed = server.close_advertise(srv)
    for st in states.values():
        server.receive_shares(srv, client.share_keys(st, relayed))
    return cfg, states, server.close_shares(srv)


def _from_mallory(inbox: list[EncryptedShare], ciphertext: bytes) -> list[EncryptedShare]:
    return [
        dataclasses.replace(m, ciphertext=ciphertext) if m.silo == "mallory" else m for m in inbox
    ]


def test_a_garbage_ciphertext_names_its_sender() -> None:
    _, states, inbox = _shared()
    bad = _from_mallory(inbox["a"], b"\x00" * 120)
    with pytest.raises(DecryptionError) as err:
        client.masked_input(states["a"], bad, np.zeros(D, "<u4"))
    e = err.value
    assert e.silo == "mallory" and e.stage == "masked" and e.run_id == "run-x"
    assert e.round_num == 3
    assert "share from silo 'mallory' failed authentication" in str(e)
    assert "silo mallory]" in str(e)  # the error's context names the sender too


def test_an_authentic_share_of_garbage_names_its_sender() -> None:
    cfg, states, inbox = _shared()
    key = client._share_key(states["mallory"], "a")  # mallory's own key for a: authentic
    ad = crypto.share_associated_data(cfg.run_id, cfg.round_num, "share", "mallory", "a")
    garbage = crypto.encrypt(key, b"\x00" * 8, ad)
    with pytest.raises(MessageFormatError) as err:
        client.masked_input(states["a"], _from_mallory(inbox["a"], garbage), np.zeros(D, "<u4"))
    assert err.value.silo == "mallory"
    assert "share from silo 'mallory'" in str(err.value)


def test_honest_shares_still_mask() -> None:
    _, states, inbox = _shared()
    message = client.masked_input(states["a"], inbox["a"], np.zeros(D, "<u4"))
    assert message.silo == "a" and message.vector.shape == (D,)
