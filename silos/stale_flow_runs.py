"""Flow runs an earlier agent left Running: it was killed (SIGKILL, a power cut) before
Prefect could record their end, and Prefect would show them Running forever.

The agent that rejoins the run marks its predecessors' flow runs of that run Crashed before
it starts its own. Only one agent serves a workspace (`silos.workspace_lock`), so a Running
flow run of this silo and run cannot belong to a live agent.
"""

from __future__ import annotations

import logging

from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    FlowRunFilter,
    FlowRunFilterName,
    FlowRunFilterState,
    FlowRunFilterStateType,
    FlowRunFilterTags,
)
from prefect.client.schemas.objects import StateType
from prefect.states import Crashed

log = logging.getLogger("fedsilo.silo")

LEFT_RUNNING = (StateType.RUNNING, StateType.PENDING, StateType.SCHEDULED)


def crash_left_behind(name: str, silo_tag: str) -> int:
    """Mark the flow runs named `name` (tagged `silo_tag`) that are not in a final state
    Crashed; how many. An unreachable Prefect API raises here, as it would for the new
    flow run."""
    only = FlowRunFilter(
        name=FlowRunFilterName(any_=[name]),
        tags=FlowRunFilterTags(all_=[silo_tag]),
        state=FlowRunFilterState(type=FlowRunFilterStateType(any_=list(LEFT_RUNNING))),
    )
    marked = 0
    with get_client(sync_client=True) as prefect:
        for run in prefect.read_flow_runs(flow_run_filter=only):
            message = (
                f"flow run {name} was left {run.state_type.value if run.state_type else '?'} "
                "by a silo agent that stopped without ending it (killed?); a new one took over"
            )
            try:
                prefect.set_flow_run_state(run.id, Crashed(message=message), force=True)
            except Exception as exc:  # the new flow run matters more than the old one's label
                log.warning("flow run %s (%s) could not be marked Crashed: %s", name, run.id, exc)
                continue
            log.info("%s (%s); marked Crashed", message, run.id)
            marked += 1
    return marked
