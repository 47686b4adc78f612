"""A refusal is final: the coordinator flow's retries are for outages and crashes.

`federated_training` retries twice (`@flow(retries=2)`) so that a lost connection or a crashed
worker resumes the run. A refusal (the service's 4xx, a contract or a spec it would refuse)
is the same on every try, and two more tries only repeat it after a delay. Prefect 3 has no
retry condition for flows; its server's retry rule reads the retries of the flow run's own
policy, so a refused flow run sets those to none before it fails.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

from pydantic import ValidationError

from flows.exceptions import AdminTokenError
from schemas.contracts.loader import ContractError
from silos.client_errors import ServiceRejected

log = logging.getLogger("fedsilo.coordinator")

# an admin token file that is missing or readable by others is configuration, as a refusal is
FINAL = (ServiceRejected, ContractError, ValidationError, AdminTokenError)


@contextmanager
def refusals_are_final() -> Iterator[None]:
    """Fail the flow run for good (no Prefect retry) when the block raises a refusal."""
    try:
        yield
    except FINAL:
        no_more_retries()
        raise


def no_more_retries() -> None:
    """Set this flow run's retries to none, so the failure it is about to report is final."""
    from prefect.client.orchestration import get_client
    from prefect.context import FlowRunContext

    context = FlowRunContext.get()
    if context is None or context.flow_run is None:
        return  # called outside a flow run: nothing would retry it
    policy = context.flow_run.empirical_policy.model_copy(update={"retries": 0})
    try:
        with get_client(sync_client=True) as client:
            client.update_flow_run(context.flow_run.id, empirical_policy=policy)
    except Exception as exc:  # noqa: BLE001  (best effort: the refusal itself must propagate)
        log.warning("could not turn off the flow run's retries (%s); Prefect may retry it", exc)
