"""Bad input at every stage raises a typed error naming the silo, round and stage."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from aggregation.secagg import server
from schemas.secagg.config import RoundConfig
from schemas.secagg.crypto import generate_identity, identity_public_bytes
from schemas.secagg.exceptions import (
    DecryptionError,
    DuplicateMessageError,
    LateMessageError,
    MessageFormatError,
    SignatureError,
    UnknownSiloError,
    UnmaskRefusedError,
    VectorShapeError,
    WrongRoundError,
)
from schemas.secagg.messages import AdvertiseKeys, MaskedInput, ShareKeys, UnmaskRequest
from silos.secagg import client

SILOS = ("a", "b", "c", "d")
IDS = {s: generate_identity() for s in SILOS}
ROSTER = {s: identity_public_bytes(k) for s, k in IDS.items()}
D = 64


class Round:
    """A 4-silo round (t = 3) driven stage by stage; silo d drops after sharing keys."""

    def __init__(self, consistency: bool = True, round_num: int = 1) -> None:
        self.cfg = RoundConfig("run-e", round_num, SILOS, 3, D, consistency_check=consistency)
        self.srv = server.ServerState(self.cfg, ROSTER)
        self.states, self.adverts_sent = {}, {}
        for s in SILOS:
            self.states[s], self.adverts_sent[s] = client.advertise_keys(
                self.cfg, s, IDS[s], ROSTER
            )

    def advertise(self):
        for advert in self.adverts_sent.values():
            server.receive_advertise(self.srv, advert)
        self.adverts = server.close_advertise(self.srv)
        return self

    def share(self):
        self.share_msgs = {s: client.share_keys(st, self.adverts) for s, st in self.states.items()}
        for msg in self.share_msgs.values():
            server.receive_shares(self.srv, msg)
        self.deliveries = server.close_shares(self.srv)
        return self

    def masked(self):
        self.masked_msgs = {
            s: client.masked_input(self.states[s], self.deliveries[s], np.arange(D, dtype="<u4"))
            for s in SILOS[:3]
        }
        for msg in self.masked_msgs.values():
            server.receive_masked(self.srv, msg)
        self.survivors = server.close_masked(self.srv)
        if self.cfg.consistency_check:
            for s in self.survivors:
                sig = client.sign_survivors(self.states[s], self.survivors)
                server.receive_consistency(self.srv, sig)
        return self


def test_forged_advert_signature_is_rejected_by_service_and_peers():
    rnd = Round()
    real = rnd.adverts_sent["a"]
    forged = AdvertiseKeys.create(
        generate_identity(), run_id="run-e", round_num=1, silo="a", c_pk=real.c_pk, s_pk=real.s_pk
    )
    with pytest.raises(SignatureError) as err:
        server.receive_advertise(rnd.srv, forged)
    assert "silo a" in str(err.value) and "round 1" in str(err.value)
    with pytest.raises(SignatureError):
        client.share_keys(rnd.states["b"], [forged, *list(rnd.adverts_sent.values())[1:]])
    # nothing was committed: the silo can still answer the genuine relay
    assert client.share_keys(rnd.states["b"], rnd.adverts_sent.values()).silo == "b"


def test_an_advert_whose_signed_row_count_was_changed_is_refused_by_service_and_peers():
    """The count a silo's weight n_k / N is checked against is signed by the silo: a relay
    that raises one silo's count (to shrink the others' weights) fails the count signature."""
    cfg = RoundConfig("run-e", 1, SILOS, 3, D)
    state, advert = client.advertise_keys(cfg, "a", IDS["a"], ROSTER, n_examples=40)
    assert advert.n_examples == 40
    raised = dataclasses.replace(advert, n_examples=10**6)
    with pytest.raises(SignatureError):
        server.receive_advertise(server.ServerState(cfg, ROSTER), raised)
    peer, own = client.advertise_keys(cfg, "b", IDS["b"], ROSTER, n_examples=30)
    with pytest.raises(SignatureError):
        client.share_keys(peer, [raised, own])
    srv = server.ServerState(cfg, ROSTER)
    server.receive_advertise(srv, advert)  # the genuine count is accepted
    assert srv.adverts["a"].n_examples == 40


def test_altered_masked_vector_fails_its_signature():
    rnd = Round().advertise().share()
    msg = client.masked_input(rnd.states["a"], rnd.deliveries["a"], np.zeros(D, "<u4"))
    vector = msg.vector.copy()
    vector[0] ^= 1
    with pytest.raises(SignatureError):
        server.receive_masked(rnd.srv, dataclasses.replace(msg, vector=vector))


def test_share_for_the_wrong_round_is_rejected():
    rnd = Round().advertise().share()
    share = rnd.deliveries["a"][0]
    stale = dataclasses.replace(share, round_num=0)
    with pytest.raises(WrongRoundError) as err:
        client.masked_input(rnd.states["a"], [stale], np.zeros(D, "<u4"))
    assert err.value.round_num == 1 and err.value.silo == share.silo


def test_ciphertext_replayed_into_another_round_fails_authentication():
    old = Round(round_num=1).advertise().share()
    new = Round(round_num=2).advertise().share()
    replay = [
        dataclasses.replace(m, ciphertext=old.deliveries["a"][i].ciphertext)
        for i, m in enumerate(new.deliveries["a"])
    ]
    with pytest.raises(DecryptionError):
        client.masked_input(new.states["a"], replay, np.zeros(D, "<u4"))


def test_masked_vector_of_the_wrong_length_or_dtype_is_rejected():
    rnd = Round().advertise().share()
    with pytest.raises(VectorShapeError) as err:
        client.masked_input(rnd.states["a"], rnd.deliveries["a"], np.zeros(D - 1, "<u4"))
    assert err.value.stage == "masked"
    with pytest.raises(VectorShapeError):
        client.masked_input(rnd.states["a"], rnd.deliveries["a"], np.zeros(D, "<u8"))
    short = MaskedInput.create(
        IDS["a"], run_id="run-e", round_num=1, silo="a", vector=np.zeros(D + 1, "<u4")
    )
    with pytest.raises(VectorShapeError) as err:
        server.receive_masked(rnd.srv, short)
    assert err.value.silo == "a"


def test_a_silo_that_sends_twice_is_rejected():
    rnd = Round()
    server.receive_advertise(rnd.srv, rnd.adverts_sent["a"])
    with pytest.raises(DuplicateMessageError):
        server.receive_advertise(rnd.srv, rnd.adverts_sent["a"])
    rnd = Round().advertise().share().masked()
    with pytest.raises(LateMessageError):
        server.receive_masked(rnd.srv, rnd.masked_msgs["a"])
    rnd = Round().advertise().share()
    msg = client.masked_input(rnd.states["a"], rnd.deliveries["a"], np.zeros(D, "<u4"))
    server.receive_masked(rnd.srv, msg)
    with pytest.raises(DuplicateMessageError) as err:
        server.receive_masked(rnd.srv, msg)
    assert err.value.silo == "a" and err.value.stage == "masked"
    with pytest.raises(DuplicateMessageError):
        client.share_keys(rnd.states["a"], rnd.adverts)
    with pytest.raises(DuplicateMessageError):
        client.masked_input(
            rnd.states["b"], [*rnd.deliveries["b"], rnd.deliveries["b"][0]], np.zeros(D, "<u4")
        )


def test_messages_from_strangers_and_late_messages_are_rejected():
    rnd = Round().advertise()
    with pytest.raises(LateMessageError):
        server.receive_advertise(rnd.srv, rnd.adverts_sent["a"])
    stranger = AdvertiseKeys.create(
        generate_identity(),
        run_id="run-e",
        round_num=1,
        silo="mallory",
        c_pk=b"0" * 32,
        s_pk=b"1" * 32,
    )
    with pytest.raises(UnknownSiloError):
        server.receive_advertise(server.ServerState(rnd.cfg, ROSTER), stranger)
    share = client.share_keys(rnd.states["a"], rnd.adverts)
    misrouted = ShareKeys.create(
        IDS["a"],
        run_id="run-e",
        round_num=1,
        silo="a",
        b_commitment=share.b_commitment,
        ciphertexts={**share.ciphertexts, "a": b"self"},
    )
    with pytest.raises(UnknownSiloError):
        server.receive_shares(rnd.srv, misrouted)


@pytest.mark.parametrize("field", ["c_pk", "s_pk"])
@pytest.mark.parametrize("key", [bytes(32), bytes(2)], ids=["low-order", "short"])
def test_an_invalid_mask_key_is_refused_on_arrival(field: str, key: bytes):
    """Accepted, such a key broke the round's unmasking (a 500 on every try) only later."""
    rnd = Round()
    sent = rnd.adverts_sent["a"]
    keys = {"c_pk": sent.c_pk, "s_pk": sent.s_pk, field: key}
    bad = AdvertiseKeys.create(IDS["a"], run_id="run-e", round_num=1, silo="a", **keys)
    with pytest.raises(MessageFormatError, match=f"{field} is not a valid X25519") as err:
        server.receive_advertise(rnd.srv, bad)
    assert (err.value.silo, err.value.round_num) == ("a", 1) and not rnd.srv.adverts


def test_service_refuses_to_request_mask_keys_of_a_silo_that_submitted():
    rnd = Round().advertise().share().masked()
    with pytest.raises(UnmaskRefusedError) as err:
        server.unmask_requests(rnd.srv, dropped=("a",))
    assert err.value.silo == "a" and "reveal" in str(err.value)


def test_client_refuses_requests_that_would_reveal_an_input():
    rnd = Round(consistency=False).advertise().share().masked()
    requests = server.unmask_requests(rnd.srv)
    req = requests["b"]
    with pytest.raises(UnmaskRefusedError):  # b listed as dropped although it submitted
        client.unmask(rnd.states["b"], dataclasses.replace(req, dropped=("b", "d")))
    with pytest.raises(UnmaskRefusedError):  # a listed both ways
        client.unmask(rnd.states["b"], dataclasses.replace(req, dropped=("a", "d")))
    client.unmask(rnd.states["b"], req)  # the honest request is answered ...
    client.unmask(rnd.states["b"], req)  # ... and may be repeated after a restart
    # a later request claiming that survivor "a" dropped would add a's mask key to its seed
    flipped = UnmaskRequest("run-e", 1, "b", ("b", "c", "d"), ("a",), {})
    with pytest.raises(UnmaskRefusedError) as err:
        client.unmask(rnd.states["b"], flipped)
    assert err.value.silo == "a"


def test_client_refuses_survivor_list_it_did_not_sign():
    rnd = Round(consistency=True).advertise().share().masked()
    req = server.unmask_requests(rnd.srv)["b"]
    with pytest.raises(UnmaskRefusedError):
        client.unmask(rnd.states["b"], dataclasses.replace(req, survivors=("a", "b", "d")))
    with pytest.raises(SignatureError):
        client.unmask(
            rnd.states["b"],
            dataclasses.replace(req, consistency={**req.consistency, "a": b"\0" * 64}),
        )


def test_service_refuses_responses_with_forbidden_shares():
    rnd = Round(consistency=False).advertise().share().masked()
    server.unmask_requests(rnd.srv)
    state = rnd.states["a"]
    bad = client.UnmaskResponse.create(
        IDS["a"],
        run_id="run-e",
        round_num=1,
        silo="a",
        b_shares={},
        s_shares={"b": state.held_s["b"].to_bytes()},  # s-share of survivor b
    )
    with pytest.raises(UnmaskRefusedError):
        server.receive_unmask(rnd.srv, bad)


def test_undecodable_bytes_raise_message_format_error():
    rnd = Round()
    raw = rnd.adverts_sent["a"].to_bytes()
    with pytest.raises(MessageFormatError):
        AdvertiseKeys.from_bytes(b"junk")
    with pytest.raises(MessageFormatError):
        ShareKeys.from_bytes(raw)
    with pytest.raises(MessageFormatError):
        MaskedInput.from_bytes(raw[:-3])
    assert AdvertiseKeys.from_bytes(raw) == rnd.adverts_sent["a"]
    size = int.from_bytes(raw[4:8], "big")
    head = raw[8 : 8 + size].replace(b'"round_num":1', b'"round_num":true')  # not a number
    flagged = raw[:4] + len(head).to_bytes(4, "big") + head + raw[8 + size :]
    with pytest.raises(MessageFormatError, match="expected <class 'int'>, got True"):
        AdvertiseKeys.from_bytes(flagged)


def test_client_refuses_a_survivor_list_without_t_signatures():
    from schemas.secagg.exceptions import InsufficientSharesError

    rnd = Round(consistency=True).advertise().share().masked()
    req = server.unmask_requests(rnd.srv)["b"]
    short = {s: sig for s, sig in req.consistency.items() if s != "c"}  # 2 of t = 3
    with pytest.raises(InsufficientSharesError) as err:
        client.unmask(rnd.states["b"], dataclasses.replace(req, consistency=short))
    assert "signed the survivor list" in str(err.value)
    assert not rnd.states["b"].revealed_b  # nothing was revealed
    client.unmask(rnd.states["b"], req)  # the endorsed request is answered


def test_client_that_did_not_sign_refuses_to_unmask():
    rnd = Round(consistency=True).advertise().share()
    rnd.masked_msgs = {
        s: client.masked_input(rnd.states[s], rnd.deliveries[s], np.arange(D, dtype="<u4"))
        for s in SILOS[:3]
    }
    for msg in rnd.masked_msgs.values():
        server.receive_masked(rnd.srv, msg)
    survivors = server.close_masked(rnd.srv)
    for s in ("a", "b", "c"):
        server.receive_consistency(rnd.srv, client.sign_survivors(rnd.states[s], survivors))
    req = server.unmask_requests(rnd.srv)["c"]
    with pytest.raises(DuplicateMessageError):  # a silo signs one survivor list per round
        client.sign_survivors(rnd.states["c"], ("a", "b", "c", "d"))
    fresh = Round(consistency=True).advertise().share().masked()
    unsigned = fresh.states["a"]
    unsigned.stage = "consistency"  # as if it never signed
    with pytest.raises(LateMessageError):
        client.unmask(unsigned, server.unmask_requests(fresh.srv)["a"])
    client.unmask(rnd.states["c"], req)


def test_signature_from_a_non_survivor_is_refused():
    rnd = Round(consistency=True).advertise().share().masked()
    req = server.unmask_requests(rnd.srv)["b"]
    forged = {**req.consistency, "d": req.consistency["a"]}
    with pytest.raises(UnknownSiloError) as err:
        client.unmask(rnd.states["b"], dataclasses.replace(req, consistency=forged))
    assert err.value.silo == "d"
