"""Recording a silo statement that rode on another request of the run (`schemas.carried`).

The statement goes into the ledger in a transaction of its own, after the request's signature
check and before the route looks at the request: a refused update keeps the validation
statement that came with it, and the update's own checks (`contributions.check_n_examples`)
already see it. The receipt is left in the request's scope state; `wire.WireVersion` puts it
on the answer, a refusal included.
"""

from __future__ import annotations

from collections.abc import MutableMapping
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from aggregation.service.auth import SiloIdentity
from aggregation.service.db import transaction
from aggregation.service.exceptions import InvalidPayload
from aggregation.service.lineage import Recorder
from aggregation.service.statements import admit_statement, record_silo_statement
from schemas import carried

STATE_KEY = "carried_receipt"


def record(
    factory: sessionmaker[Session],
    recorder: Recorder,
    silo: SiloIdentity,
    run_id: str,
    header: str,
) -> str:
    """Append the carried statement to the ledger; the receipt as `carried.RECEIPT_HEADER`'s
    value.

    Raises
    ------
    InvalidPayload
        Malformed, of a kind that does not ride along, naming another silo, or badly signed;
        the message names the silo and the run. Nothing is written.
    Conflict
        The run takes no statement now (`statements.admit_statement`). Nothing is written.
    """
    where = (
        f"statement carried by silo {silo.name!r} in run {run_id!r} ({carried.STATEMENT_HEADER})"
    )
    try:
        kind, payload, signature = carried.parse_statement(header)
    except ValueError as exc:
        raise InvalidPayload(f"{where}: {exc}") from exc
    if payload.get("silo") != silo.name:
        raise InvalidPayload(f"{where}: it names silo {payload.get('silo')!r}")
    try:
        with transaction(factory) as s:
            admit_statement(s, run_id, silo.name, kind)
            receipt = record_silo_statement(
                s, recorder, silo.federation, silo.name, run_id, kind, payload, signature
            )
    except InvalidPayload as exc:
        raise InvalidPayload(f"{where}: {exc.detail}") from exc
    return carried.encode(receipt)


def receipt_of(scope: MutableMapping[str, Any]) -> str | None:
    """The receipt a dependency left for this request's answer, if any."""
    state = scope.get("state")
    return state.get(STATE_KEY) if isinstance(state, dict) else None
