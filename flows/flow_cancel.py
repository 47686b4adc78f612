"""A cancelled coordinator flow run cancels its training run at the service.

`prefect flow-run cancel` (or the UI's Cancel) stops the coordinator's process, but the
service's run would stay ``running``: its silos, each serving one run at a time, would stay in
it, and the federation's next run would find them busy until the service failed the orphan as
abandoned (`aggregation.service.abandoned`). So `federated_training` has this as its
``on_cancellation`` hook: Prefect runs it (in the flow's process, or in the worker's when the
runner cancels) with the flow run, whose parameters name the service, the federation and the
token's file or Secret block. The training run is the one the service records for this flow
run (`RunOut.prefect_flow_run_id`); it is cancelled as `fedsilo runs cancel` would, and its
silos leave it at their next poll.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from flows.admin_token import resolve_admin_token
from flows.service_client import CoordinatorClient

if TYPE_CHECKING:
    from prefect import Flow
    from prefect.client.schemas.objects import FlowRun
    from prefect.states import State

log = logging.getLogger("fedsilo.coordinator")

SEARCH_LIMIT = 200  # the federation's latest runs: a cancelled flow run's is among them


def cancel_service_run(flow: Flow[..., Any], flow_run: FlowRun, state: State[Any]) -> None:
    """The ``on_cancellation`` hook: `cancel_run_of` the cancelled flow run."""
    cancel_run_of(str(flow_run.id), flow_run.parameters)


def cancel_run_of(flow_run_id: str, p: dict[str, Any]) -> str | None:
    """Cancel the running training run of flow run `flow_run_id` (whose parameters are `p`) at
    the service; its id (None: none was running). Never raises: a hook's failure would only
    hide the cancellation's own state."""
    try:
        token = resolve_admin_token(p.get("admin_token_file"), p.get("admin_token_block"))
        client = CoordinatorClient(p["service_urls"], token=token, retry_for_s=30)
        mine = [
            r
            for r in client.list_runs(p["federation"], limit=SEARCH_LIMIT)
            if r.prefect_flow_run_id == flow_run_id and r.status in ("created", "running")
        ]
        for run in mine:
            reason = f"its coordinator's Prefect flow run {flow_run_id} was cancelled"
            client.cancel_run(run.run_id, reason)
            log.warning("run %s cancelled at the service: %s", run.run_id, reason)
        return mine[0].run_id if mine else None
    except Exception as exc:  # noqa: BLE001  (logged: the run then ends as abandoned)
        log.error(
            "could not cancel the training run of flow run %s at the service (%s); the "
            "service fails it as abandoned after its grace, or run `fedsilo runs cancel`",
            flow_run_id,
            exc,
        )
        return None
