"""Silo-signed ledger statements about what the service accepted, and rejected submissions.

An accepted update (plain, masked or sealed trees) comes with the silo's signed
``update_accepted`` statement; the service appends it in the same transaction and answers
with its receipt. A refused submission is recorded (``update_rejected``) in a transaction of
its own, so the refusal itself leaves the round untouched.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from aggregation.service.db import transaction
from aggregation.service.exceptions import InvalidPayload, ServiceError
from aggregation.service.federations import find_silo
from aggregation.service.lineage import Recorder
from aggregation.service.tables import Contribution, Run, RunSilo
from schemas.lineage import LineageError
from schemas.signing import STATEMENT_HEADER, update_statement_payload


def accept_statement(
    s: Session,
    recorder: Recorder,
    federation: str,
    silo: str,
    c: Contribution,
    created: bool,
    statement_signature: str | None,
    what: str = "update",
) -> dict[str, object]:
    """Record the silo's signed `update_accepted` statement for a stored update; the answer
    (digest, duplicate, receipt). A resubmission (created False) was acknowledged before."""
    if not created:
        return {"digest": c.digest, "duplicate": True, "receipt": None}
    if not statement_signature:
        raise InvalidPayload(
            f"{what} from silo {silo!r} for round {c.round} lacks its signed ledger "
            f"statement ({STATEMENT_HEADER} header)"
        )
    payload = update_statement_payload(silo, c.round, c.digest or "", c.n_examples or 0)
    receipt = record_silo_statement(
        s, recorder, federation, silo, c.run_id, "update_accepted", payload, statement_signature
    )
    return {"digest": c.digest, "duplicate": False, "receipt": receipt}


def record_silo_statement(
    s: Session,
    recorder: Recorder,
    federation: str,
    silo: str,
    run_id: str,
    kind: str,
    payload: dict[str, Any],
    signature: str,
) -> dict[str, object]:
    """Append a silo-authored statement (its signature checked against the enrolled key);
    the service's receipt. InvalidPayload when the signature or the payload is wrong."""
    row = find_silo(s, federation, silo)
    assert row is not None, "callers are authenticated silos"
    try:
        _, receipt = recorder.silo(s, kind, payload, run_id, silo, signature, row.public_key)
    except LineageError as exc:
        raise InvalidPayload(f"{kind} statement from silo {silo!r}: {exc}") from exc
    return receipt.model_dump()


def record_rejection(
    factory: sessionmaker[Session],
    recorder: Recorder,
    run_id: str,
    number: int,
    silo: str,
    exc: ServiceError,
) -> None:
    """A rejected update leaves round state untouched but is recorded, in its own transaction."""
    with transaction(factory) as s:
        if s.get(Run, run_id) is None or s.get(RunSilo, (run_id, silo)) is None:
            return
        recorder.service(
            s,
            "update_rejected",
            {"silo": silo, "round": number, "status": exc.status_code, "reason": exc.detail},
            run_id,
        )
