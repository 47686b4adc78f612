"""Federations and silo enrolment: who may take part, with which public key."""

from __future__ import annotations

import hashlib
from datetime import timedelta

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from sqlalchemy import func, select, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from aggregation.service.exceptions import Conflict, InvalidPayload, NotFound
from aggregation.service.tables import Federation, Silo, utcnow
from schemas.wire import (
    ONLINE_WITHIN_S,
    EnrolRequest,
    FederationOut,
    ReadyIn,
    SiloOut,
    enrol_proof_message,
)


def create_federation(s: Session, *, name: str, description: str) -> Federation:
    if s.get(Federation, name) is not None:
        raise Conflict(f"federation {name!r} already exists")
    fed = Federation(name=name, description=description)
    s.add(fed)
    s.flush()
    return fed


def get_federation(s: Session, name: str) -> Federation:
    fed = s.get(Federation, name)
    if fed is None:
        raise NotFound(
            f"federation {name!r} does not exist; create it with `fedsilo federation create "
            f"{name}` (POST /v1/federations)"
        )
    return fed


def find_silo(s: Session, federation: str, name: str) -> Silo | None:
    return s.scalar(select(Silo).where(Silo.federation == federation, Silo.name == name))


def enrol(s: Session, req: EnrolRequest) -> Silo:
    """Record a silo's key after checking it signed the enrolment (proof of possession).

    Re-enrolling with the same key is a no-op; a different key for a known name is refused,
    since it would let anyone take over a silo's identity. A name is one identity across the
    hub (ledger authors are ``silo:NAME``, without the federation, and `silo_keys` maps each
    to one key): the same key may enrol under it in several federations (one institution),
    another key is refused, as is a name that differs from one of the federation's silos
    only in case. Keys are stored as lower-case hex, whatever case the request used.

    Enrolments of one name are serialised hub-wide (`_lock_name`), so concurrent requests
    get the answers they would get one after the other (201 and the same silo for the same
    key, 409 for another), never an error from the unique constraint.
    """
    get_federation(s, req.federation)
    try:
        key = Ed25519PublicKey.from_public_bytes(bytes.fromhex(req.public_key))
        key.verify(
            bytes.fromhex(req.proof), enrol_proof_message(req.federation, req.silo, req.public_key)
        )
    except (ValueError, InvalidSignature) as exc:
        raise InvalidPayload(
            f"enrolment of silo {req.silo!r}: proof of key possession is invalid"
        ) from exc
    public_key = req.public_key.lower()  # the proof signs the request's spelling; one is kept
    _lock_name(s, req.silo)
    silo = find_silo(s, req.federation, req.silo)
    if silo is not None:
        return _enrolled_before(silo, req, public_key)
    _refuse_namesakes(s, req, public_key)
    try:
        with s.begin_nested():  # the lock makes a lost race unlikely; a savepoint answers it
            silo = Silo(
                federation=req.federation, name=req.silo, public_key=public_key, status="pending"
            )
            s.add(silo)
    except IntegrityError:
        silo = find_silo(s, req.federation, req.silo)  # the winner's row, committed
        if silo is None:
            raise
        return _enrolled_before(silo, req, public_key)
    return silo


# Two-key advisory locks (a key space apart from the ledger's one-key lock): "enro", then a
# hash of the lower-cased silo name, so case variants of a name wait for each other too.
ENROL_LOCK_SPACE = int.from_bytes(b"enro", "big")


def _lock_name(s: Session, name: str) -> None:
    """Serialise enrolments of `name` (any case) until the transaction ends: the checks of
    `enrol` look at every federation, which no unique constraint covers.

    PostgreSQL: a transaction-level advisory lock on the name. SQLite: a FOR UPDATE select,
    which opens the transaction with ``BEGIN IMMEDIATE`` (`db._sqlite_for_update`): the
    database's single write lock, which every enrolment takes before it looks.
    """
    if s.get_bind().dialect.name == "postgresql":
        digest = hashlib.sha256(name.lower().encode()).digest()
        s.execute(
            text("SELECT pg_advisory_xact_lock(:space, :key)"),
            {"space": ENROL_LOCK_SPACE, "key": int.from_bytes(digest[:4], "big", signed=True)},
        )
    else:
        s.execute(select(Silo.id).where(Silo.name == name).with_for_update())


def _enrolled_before(silo: Silo, req: EnrolRequest, public_key: str) -> Silo:
    """The answer to an enrolment of a name the federation knows: the silo, for its key."""
    if silo.public_key.lower() != public_key:
        # the ledger names the silo's past statements by its name and verifies them with its
        # key: a name never changes key, even once revoked
        raise Conflict(
            f"silo {req.silo!r} is already enrolled in {req.federation!r} with another key "
            f"({silo.status}); a silo name keeps its key for good (the ledger verifies its "
            "statements with it): enrol with that key, or under a new name (and have the "
            "coordinator revoke the old one if its key is lost)"
        )
    return silo


def _refuse_namesakes(s: Session, req: EnrolRequest, public_key: str) -> None:
    """Refuse (Conflict) a new silo whose name differs from one of its federation's only in
    case, or that another federation of this hub knows with another key."""
    twin = s.scalar(
        select(Silo.name)
        .where(Silo.federation == req.federation, func.lower(Silo.name) == req.silo.lower())
        .limit(1)
    )
    if twin is not None:
        raise Conflict(
            f"silo name {req.silo!r} differs only in case from silo {twin!r} of federation "
            f"{req.federation!r}; enrol under that name, or choose a name that differs in more "
            "than case"
        )
    keys = s.scalars(
        select(Silo.public_key).where(Silo.name == req.silo, Silo.federation != req.federation)
    )
    if any(key.lower() != public_key for key in keys):
        raise Conflict(
            f"silo name {req.silo!r} is enrolled in another federation of this hub with another "
            "key (ledger entries name silos by name alone); choose another name, or enrol with "
            "the same key"
        )


def set_silo_status(s: Session, federation: str, name: str, status: str) -> Silo:
    get_federation(s, federation)  # a misspelt federation is not "the silo has not enrolled"
    silo = find_silo(s, federation, name)
    if silo is None:
        raise NotFound(f"silo {name!r} has not enrolled in federation {federation!r}")
    if silo.status == "revoked" and status == "approved":
        raise Conflict(f"silo {name!r} was revoked; it must enrol again under a new name")
    silo.status = status
    if status == "approved":
        silo.approved_at = utcnow()
    return silo


def list_federations(s: Session) -> list[Federation]:
    return list(s.scalars(select(Federation).order_by(Federation.name)))


def silo_keys(s: Session) -> dict[str, str]:
    """Every enrolled silo's raw Ed25519 public key (hex), as ledger authors name them.

    `enrol` keeps one key per name across the hub; should an older database hold several
    rows of a name with different keys, the key is that of the row that can have authored
    ledger entries: an approved row before one approved then revoked, either before one
    never approved (pending, or revoked while pending); the first enrolled among equals.
    """
    chosen: dict[str, Silo] = {}
    for row in s.scalars(select(Silo).order_by(Silo.name, Silo.id)):
        held = chosen.get(row.name)
        if held is None or _authorship(row) > _authorship(held):
            chosen[row.name] = row
    return {f"silo:{name}": row.public_key for name, row in chosen.items()}


def _authorship(row: Silo) -> tuple[bool, bool]:
    """How likely the row's key signed ledger entries: (was ever approved, approved now)."""
    return (row.status == "approved" or row.approved_at is not None, row.status == "approved")


def list_silos(s: Session, federation: str) -> list[Silo]:
    get_federation(s, federation)
    return list(s.scalars(select(Silo).where(Silo.federation == federation).order_by(Silo.name)))


def federation_out(fed: Federation) -> FederationOut:
    return FederationOut(name=fed.name, description=fed.description, created_at=fed.created_at)


def mark_ready(s: Session, federation: str, name: str, ready: ReadyIn) -> Silo:
    """Store the silo's readiness report (the latest one counts)."""
    silo = find_silo(s, federation, name)
    assert silo is not None, "callers are authenticated silos"
    silo.ready_at = utcnow()
    silo.ready_json = ready.model_dump_json()
    return silo


def silo_out(silo: Silo) -> SiloOut:
    return SiloOut(
        name=silo.name,
        federation=silo.federation,
        status=silo.status,  # type: ignore[arg-type]
        public_key=silo.public_key,
        enrolled_at=silo.enrolled_at,
        last_seen_at=silo.last_seen_at,
        ready_at=silo.ready_at,
        ready=ReadyIn.model_validate_json(silo.ready_json) if silo.ready_json else None,
        online=silo.last_seen_at is not None
        and utcnow() - silo.last_seen_at < timedelta(seconds=ONLINE_WITHIN_S),
    )
