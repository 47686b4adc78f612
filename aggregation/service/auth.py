"""Who is calling: the coordinator (bearer token) or a silo (Ed25519-signed request)."""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from sqlalchemy import delete, or_, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from aggregation.service.db import transaction
from aggregation.service.exceptions import Forbidden, ServiceError, Unauthorized
from aggregation.service.federations import find_silo
from aggregation.service.runs import check_participant
from aggregation.service.tables import Nonce, Silo, utcnow
from schemas import signing
from schemas.wire import ONLINE_WITHIN_S


@dataclass(frozen=True)
class SiloIdentity:
    federation: str
    name: str
    body: bytes


def check_admin(authorization: str | None, token: str) -> None:
    if not authorization or not authorization.startswith("Bearer "):
        raise Unauthorized("coordinator endpoint: send 'Authorization: Bearer <admin token>'")
    given = authorization.removeprefix("Bearer ").strip()
    # bytes: compare_digest refuses str holding non-ASCII characters (a TypeError, a 500)
    if not hmac.compare_digest(given.encode("utf-8", "surrogatepass"), token.encode()):
        raise Unauthorized("coordinator endpoint: the admin token is wrong")


def verify_silo_request(
    factory: sessionmaker[Session],
    *,
    method: str,
    path: str,
    body: bytes,
    headers: dict[str, str],
    run_id: str | None = None,
) -> SiloIdentity:
    """Check the signature headers; record the nonce so the same request cannot be replayed;
    with `run_id`, also that the silo takes part in that run (NotFound, Forbidden).

    One transaction does it all (it used to take three, a commit each, on every request): the
    nonce and the silo's presence are committed even when the request is then refused for the
    silo's status or the run, so a refused request cannot be replayed either."""
    missing = [
        h
        for h in (
            signing.HEADER_FEDERATION,
            signing.HEADER_SILO,
            signing.HEADER_TIMESTAMP,
            signing.HEADER_NONCE,
            signing.HEADER_SIGNATURE,
        )
        if not headers.get(h.lower())
    ]
    if missing:
        raise Unauthorized(f"unsigned request: missing headers {missing}")
    federation = headers[signing.HEADER_FEDERATION.lower()]
    silo_name = headers[signing.HEADER_SILO.lower()]
    timestamp = headers[signing.HEADER_TIMESTAMP.lower()]
    nonce = headers[signing.HEADER_NONCE.lower()]
    _check_timestamp(timestamp, silo_name)
    if len(nonce) > 64:
        raise Unauthorized("nonce longer than 64 characters")
    message = signing.request_message(method, path, body, timestamp, nonce, federation, silo_name)
    refusal: ServiceError | None = None
    try:
        with transaction(factory) as s:
            silo = find_silo(s, federation, silo_name)
            if silo is None:
                raise Unauthorized(f"unknown silo {silo_name!r} in federation {federation!r}")
            try:
                key = Ed25519PublicKey.from_public_bytes(bytes.fromhex(silo.public_key))
                key.verify(bytes.fromhex(headers[signing.HEADER_SIGNATURE.lower()]), message)
            except (ValueError, InvalidSignature) as exc:
                raise Unauthorized(f"bad signature from silo {silo_name!r}") from exc
            s.add(Nonce(silo_id=silo.id, nonce=nonce))
            s.flush()  # a used nonce fails here, before anything else is written
            if silo.last_seen_at is None or silo.last_seen_at < utcnow() - LAST_SEEN_RESOLUTION:
                _seen(s, silo.id)  # most requests skip the UPDATE: this one row was just read
            refusal = _refusal(s, silo.status, federation, silo_name, run_id)
    except IntegrityError as exc:
        raise Unauthorized(
            f"replayed request from silo {silo_name!r} (nonce already used)"
        ) from exc
    if refusal is not None:
        raise refusal
    return SiloIdentity(federation=federation, name=silo_name, body=body)


def _refusal(
    s: Session, status: str, federation: str, silo: str, run_id: str | None
) -> ServiceError | None:
    """Why an authenticated silo's request is refused (its status, or not taking part in
    `run_id`), or None. Returned, not raised: the caller commits the nonce first."""
    if status == "pending":
        return Forbidden(f"silo {silo!r} is enrolled but awaits the coordinator's approval")
    if status != "approved":
        return Forbidden(f"silo {silo!r} is {status}")
    if run_id is not None:
        try:
            check_participant(s, run_id, silo, federation)
        except ServiceError as exc:
            return exc
    return None


# last_seen_at is written at most this often per silo: a long-polling agent costs no write.
# A third of the online window (30 s of 90), so a working silo never shows offline; at 5 s a
# 20 s round (128 silos, bench/scale.py) wrote it about 4 times a silo.
LAST_SEEN_RESOLUTION = timedelta(seconds=ONLINE_WITHIN_S / 3)


def _seen(s: Session, silo_id: int) -> None:
    """Refresh the silo's last_seen_at when the stored value is older than the resolution."""
    now = utcnow()
    stale = or_(Silo.last_seen_at.is_(None), Silo.last_seen_at < now - LAST_SEEN_RESOLUTION)
    s.execute(update(Silo).where(Silo.id == silo_id, stale).values(last_seen_at=now))


def _check_timestamp(timestamp: str, silo: str) -> None:
    try:
        sent = datetime.fromisoformat(timestamp)
    except ValueError as exc:
        raise Unauthorized(f"silo {silo!r}: timestamp {timestamp!r} is not ISO 8601") from exc
    if sent.tzinfo is None:
        raise Unauthorized(f"silo {silo!r}: timestamp must carry a UTC offset")
    skew = abs((datetime.now(UTC) - sent).total_seconds())
    if skew > signing.MAX_CLOCK_SKEW_S:
        raise Unauthorized(
            f"silo {silo!r}: request timestamp is {skew:.0f}s off the service clock "
            f"(allowed {signing.MAX_CLOCK_SKEW_S}s); check the silo's clock"
        )


def prune_nonces(factory: sessionmaker[Session]) -> None:
    """Forget nonces older than the timestamp window: those requests are refused as stale."""
    cutoff = utcnow() - timedelta(seconds=2 * signing.MAX_CLOCK_SKEW_S)
    with transaction(factory) as s:
        s.execute(delete(Nonce).where(Nonce.seen_at < cutoff))
