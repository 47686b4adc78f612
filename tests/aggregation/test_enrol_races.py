"""Enrolment (unauthenticated ``POST /v1/enrol``): concurrent requests of one name, and the
rule that a silo name is one key across the hub.

Two enrolments of one new name that both looked before either inserted used to end in an
unhandled unique-constraint error (500) for one of them; they get the answers they would
get one after the other: 201 and the same silo for the same key, 409 for another key.

Ledger authors are ``silo:NAME``, without the federation, and ``/v1/ledger/keys`` maps each
to one key: an outsider's pending enrolment of an honest silo's name in another federation,
with a key of its own, replaced that silo's key there and broke `fedsilo lineage verify`.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable
from datetime import datetime

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from sqlalchemy import Engine
from support.api_federation import WIRE
from support.live_service import coordinator

from aggregation.service import federations
from aggregation.service.db import make_sessionmaker, transaction
from aggregation.service.tables import Federation, Silo
from schemas.wire import enrol_proof_message
from silos.client import SiloClient
from silos.client_errors import ClientError, ServiceRejected

RACE_WAIT_S = 2.0  # how long the first enrolment waits at the hook for the second


def _fresh(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def _federation(url: str) -> str:
    name = _fresh("f")
    coordinator(url).create_federation(name)
    return name


def _hex(key: Ed25519PrivateKey) -> str:
    return key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw).hex()


def _enrol(url: str, federation: str, name: str, key: Ed25519PrivateKey) -> object:
    """The silo's answer (SiloOut), or the error the client raised (no retry of a 5xx)."""
    client = SiloClient(url, federation=federation, silo=name, key=key, retry_for_s=0)
    try:
        return client.enrol()
    except ClientError as exc:
        return exc
    finally:
        client.close()


def _looked_together(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make two enrolments both look for their silo before either inserts it: each waits
    after `find_silo` for the other (a service that serialises enrolments makes the first
    wait `RACE_WAIT_S` in vain, then both go on, one after the other)."""
    barrier = threading.Barrier(2)
    looked = federations.find_silo

    def find_then_wait(s, federation, name):  # type: ignore[no-untyped-def]
        found = looked(s, federation, name)
        try:
            barrier.wait(RACE_WAIT_S)
        except threading.BrokenBarrierError:
            pass
        return found

    monkeypatch.setattr(federations, "find_silo", find_then_wait)


def _race(*calls: Callable[[], object]) -> list[object]:
    answers: list[object] = [None] * len(calls)

    def run(i: int) -> None:
        answers[i] = calls[i]()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(calls))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return answers


def test_concurrent_enrolments_of_one_name_and_key_both_get_the_silo(
    api_service_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    url, key = api_service_url, Ed25519PrivateKey.generate()
    federation, name = _federation(url), _fresh("race")
    _looked_together(monkeypatch)
    answers = _race(*[lambda: _enrol(url, federation, name, key)] * 2)
    assert all(not isinstance(a, Exception) for a in answers), answers
    assert {(a.name, a.public_key) for a in answers} == {(name, _hex(key))}  # type: ignore[attr-defined]
    monkeypatch.undo()
    silos = [s for s in coordinator(url).silos(federation) if s.name == name]
    assert len(silos) == 1 and silos[0].status == "pending"


def test_concurrent_enrolments_of_one_name_with_two_keys_give_201_and_409(
    api_service_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = api_service_url
    federation, name = _federation(url), _fresh("race")
    keys = [Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()]
    _looked_together(monkeypatch)
    answers = _race(*[lambda k=k: _enrol(url, federation, name, k) for k in keys])  # type: ignore[misc]
    won = [a for a in answers if not isinstance(a, Exception)]
    lost = [a for a in answers if isinstance(a, Exception)]
    assert len(won) == 1 and len(lost) == 1, answers
    assert isinstance(lost[0], ServiceRejected) and lost[0].status == 409, lost[0]
    assert f"silo {name!r} is already enrolled in {federation!r} with another key" in str(lost[0])
    monkeypatch.undo()
    (silo,) = [s for s in coordinator(url).silos(federation) if s.name == name]
    assert silo.public_key == won[0].public_key  # type: ignore[attr-defined]


def test_a_name_is_one_key_across_the_hub(api_service_url: str) -> None:
    url = api_service_url
    coord = coordinator(url)
    honest, outsider = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    home, other, third = _federation(url), _federation(url), _federation(url)
    name = _fresh("cleveland")
    assert not isinstance(_enrol(url, home, name, honest), Exception)
    coord.approve(home, name)
    refused = _enrol(url, other, name, outsider)  # unauthenticated, in another federation
    assert isinstance(refused, ServiceRejected) and refused.status == 409, refused
    assert f"silo name {name!r} is enrolled in another federation of this hub" in refused.detail
    assert "choose another name, or enrol with the same key" in refused.detail
    assert home not in refused.detail  # an outsider learns of no other federation's name
    assert coord.ledger_keys()[f"silo:{name}"] == _hex(honest)
    assert [s.name for s in coord.silos(other)] == []
    # one institution, one key: it may enrol under its name in another federation
    again = _enrol(url, third, name, honest)
    assert not isinstance(again, Exception) and again.public_key == _hex(honest)  # type: ignore[attr-defined]
    # and the outsider cannot take the name in a federation where it is still pending either
    late = _enrol(url, _federation(url), name, outsider)
    assert isinstance(late, ServiceRejected) and late.status == 409


def _raw_enrol(url: str, federation: str, name: str, key: Ed25519PrivateKey, upper: bool):  # type: ignore[no-untyped-def]
    public = _hex(key).upper() if upper else _hex(key)
    proof = key.sign(enrol_proof_message(federation, name, public)).hex()
    body = {"federation": federation, "silo": name, "public_key": public, "proof": proof}
    return httpx.post(url + "/v1/enrol", json=body, headers=WIRE)


@pytest.mark.parametrize("first_upper", [True, False])
def test_an_upper_case_hex_key_is_the_same_key(api_service_url: str, first_upper: bool) -> None:
    url, key = api_service_url, Ed25519PrivateKey.generate()
    federation, name = _federation(url), _fresh("hex")
    first = _raw_enrol(url, federation, name, key, upper=first_upper)
    assert first.status_code == 201, first.text
    assert first.json()["public_key"] == _hex(key)  # stored lower-case
    again = _raw_enrol(url, federation, name, key, upper=not first_upper)
    assert again.status_code == 201, again.text
    elsewhere = _raw_enrol(url, _federation(url), name, key, upper=not first_upper)
    assert elsewhere.status_code == 201, elsewhere.text


def test_a_name_differing_only_in_case_is_refused(api_service_url: str) -> None:
    url = api_service_url
    federation, name = _federation(url), _fresh("cleveland")
    assert not isinstance(_enrol(url, federation, name, Ed25519PrivateKey.generate()), Exception)
    twin = name.capitalize()
    refused = _enrol(url, federation, twin, Ed25519PrivateKey.generate())
    assert isinstance(refused, ServiceRejected) and refused.status == 409, refused
    assert f"silo name {twin!r} differs only in case from silo {name!r}" in refused.detail
    assert [s.name for s in coordinator(url).silos(federation)] == [name]


def _row(
    federation: str, key: Ed25519PrivateKey, status: str, approved: datetime | None = None
) -> Silo:
    return Silo(
        federation=federation,
        name="x",
        public_key=_hex(key),
        status=status,
        approved_at=approved,
    )


@pytest.mark.parametrize("author_status", ["approved", "revoked"])
def test_ledger_keys_name_the_key_that_authored_entries(
    fed_engine: Engine, author_status: str
) -> None:
    """A database from before the one-key rule may hold a name under several keys: the key
    is that of the row whose silo could sign entries (approved, or approved then revoked),
    not of whichever row came last (a later pending enrolment, in another federation)."""
    author, squatter, never = (Ed25519PrivateKey.generate() for _ in range(3))
    factory = make_sessionmaker(fed_engine)
    with transaction(factory) as s:
        s.add_all([Federation(name="g"), Federation(name="h")])
        s.flush()
        s.add(_row("h", never, "revoked"))  # revoked while pending: it never signed
        s.flush()
        s.add(_row("f", author, author_status, approved=datetime(2026, 1, 1)))
        s.flush()
        s.add(_row("g", squatter, "pending"))
    with transaction(factory) as s:
        assert federations.silo_keys(s) == {"silo:x": _hex(author)}
