"""Federations and silo enrolment: who may take part, with which public key."""

from __future__ import annotations

from datetime import timedelta

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from sqlalchemy import select
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
    since it would let anyone take over a silo's identity.
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
    silo = find_silo(s, req.federation, req.silo)
    if silo is not None:
        if silo.public_key != req.public_key:
            raise Conflict(
                f"silo {req.silo!r} is already enrolled in {req.federation!r} with another key; "
                "ask the coordinator to revoke it first"
            )
        return silo
    silo = Silo(
        federation=req.federation, name=req.silo, public_key=req.public_key, status="pending"
    )
    s.add(silo)
    s.flush()
    return silo


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
    """Every enrolled silo's raw Ed25519 public key (hex), as ledger authors name them."""
    return {f"silo:{row.name}": row.public_key for row in s.scalars(select(Silo))}


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
