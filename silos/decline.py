"""A silo that cannot answer a round says so: a signed ``decline`` statement, never silence.

Every failure before the silo's update (its policy, its data, the contract, its privacy
budget, a training error, a task it has no handler for) becomes a `Declined` with a scope
(``round``: it sits the round out and waits for the next; ``run``: it leaves the run) and a
cause, sent once (`send`) as `schemas.wire.DeclinePayload`. The service records it in the
ledger and moves the round on at once instead of waiting for its deadline.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from schemas.contracts.loader import ContractError
from schemas.wire import MAX_TEXT, DeclineCause, DeclinePayload, DeclineScope
from silos.client import SiloClient
from silos.client_errors import AlreadyAnswered, ServiceRejected
from silos.exceptions import (
    DataError,
    FeatureError,
    ModelError,
    PolicyRefusal,
    PrivacyBudgetError,
    SiloError,
    UnsupportedTask,
)
from silos.lineage_copy import keep_receipt

log = logging.getLogger("fedsilo.silo")


class Declined(SiloError):
    """This silo cannot answer round `round_` (or, scope ``run``, the rest of the run)."""

    def __init__(self, scope: DeclineScope, cause: DeclineCause, reason: str) -> None:
        super().__init__(f"{cause}: {reason}")
        self.scope: DeclineScope = scope
        self.cause: DeclineCause = cause
        self.reason = reason

    def __reduce__(self) -> tuple[type[Declined], tuple[str, str, str]]:
        return Declined, (self.scope, self.cause, self.reason)  # picklable as a task's result


def declined_for(exc: BaseException) -> Declined:
    """The decline a failure before the update amounts to.

    A bad table or rows that cannot be split or encoded (one class only, say) is the round's:
    the gate re-reads the table every round, so an operator's fix counts from the next one. A
    contract the silo cannot load, its policy, its privacy budget or a task it has no handler
    for cannot change within the run.
    """
    if isinstance(exc, Declined):
        return exc
    text = f"{type(exc).__name__}: {exc}"
    if isinstance(exc, DataError | FeatureError):  # its example values stay at the silo
        return Declined("round", "data", getattr(exc, "shareable", str(exc)))
    if isinstance(exc, ContractError):
        return Declined("run", "contract", str(exc))
    if isinstance(exc, PolicyRefusal):
        return Declined("run", "policy", str(exc))
    if isinstance(exc, PrivacyBudgetError):
        return Declined("run", "privacy_budget", str(exc))
    if isinstance(exc, UnsupportedTask):
        return Declined("run", "internal", str(exc))
    if isinstance(exc, ModelError):
        return Declined("round", "training", str(exc))
    if isinstance(exc, OSError) and exc.filename:  # a full disk, a permission: not training
        return Declined("round", "internal", text)
    return Declined("round", "training", text)


def send(client: SiloClient, workspace: Path, run_id: str, round_: int, declined: Declined) -> bool:
    """Sign and send the decline; whether the service now holds this silo's answer to the
    round: True when it took the decline or already had an answer, False when it refused it
    because that round is not the run's open round (it closed, or a restored hub is back at
    an earlier round and will open this one again). A refusal is logged and otherwise
    harmless."""
    payload = DeclinePayload(
        silo=client.silo,
        run_id=run_id,
        round=max(round_, 1),
        scope=declined.scope,
        cause=declined.cause,
        reason=_printable(declined.reason),
    )
    try:
        answer = client.submit_statement(run_id, "decline", payload.model_dump())
    except AlreadyAnswered:  # an earlier answer to the round stands
        return True
    except ServiceRejected as exc:
        log.warning(
            "silo %s: the service did not take its decline of round %d of run %s: %s",
            client.silo,
            round_,
            run_id,
            exc.detail,
        )
        if declined.scope == "run":  # no open round to decline (between rounds, say): leave
            _refuse(client, run_id, f"{declined.cause}: {payload.reason}"[:MAX_TEXT])
        return False
    keep_receipt(workspace, answer)
    return True


def log_decline(
    logger: logging.Logger | logging.LoggerAdapter[logging.Logger],
    round_: int,
    declined: Declined,
    exc: BaseException,
) -> None:
    """One line for the decline; the traceback of an unexpected error at debug level only."""
    logger.warning(
        "round %d: declining the %s (%s): %s",
        round_,
        declined.scope,
        declined.cause,
        declined.reason,
    )
    if exc is not declined:
        logger.debug("round %d: the error behind the decline", round_, exc_info=exc)


def _refuse(client: SiloClient, run_id: str, reason: str) -> None:
    try:
        client.refuse(run_id, reason)
    except ServiceRejected as exc:
        log.warning(
            "silo %s: the service refused its refusal of run %s too: %s",
            client.silo,
            run_id,
            exc.detail,
        )


def _printable(reason: str) -> str:
    """The reason as one line that fits the wire (no NUL, at most MAX_TEXT characters)."""
    line = " ".join(reason.replace("\x00", " ").split())
    return (line or "no reason given")[:MAX_TEXT]


@dataclass
class FailureLog:
    """Logs each distinct failure once per round: a failure that repeats every poll (the same
    bad table, the same unreachable handler) must not grow the log by a line per poll."""

    seen: set[tuple[int, str]]

    @classmethod
    def new(cls) -> FailureLog:
        return cls(set())

    def first(self, round_: int, what: str) -> bool:
        """True the first time `what` is reported for `round_`."""
        key = (round_, what)
        if key in self.seen:
            return False
        self.seen.add(key)
        return True
