"""Resuming a training run after the coordinator's flow run crashed or failed.

A retried Prefect flow run keeps its flow run id, and the service stores that id with the run
it created; so a retry finds its run instead of starting a new one, and replays the rounds the
service already closed rather than training them again. `resume_run_id` names a run explicitly
(`fedsilo train --resume RUN`, or a new flow run picking up an abandoned one).
"""

from __future__ import annotations

from flows.exceptions import RunFailed
from flows.flow_retries import no_more_retries
from flows.run_naming import label_flow_run
from flows.service_client import CoordinatorClient
from schemas.wire import RoundOut, RunFinish, RunOut

# Runs are listed newest first: a retry finds its own run among the federation's latest ones.
_SEARCH_LIMIT = 200


def find_run(
    client: CoordinatorClient, federation: str, flow_run_id: str, resume_run_id: str | None
) -> RunOut | None:
    """The run this flow run should carry on, or None to start a new one.

    A run that was created but never started (the flow crashed in between) is marked failed
    and forgotten: starting afresh costs nothing, since no round ran.
    """
    if resume_run_id:
        run = client.get_run(resume_run_id)
        if run.federation != federation:
            raise RunFailed(
                f"run {resume_run_id} belongs to federation {run.federation!r}, not {federation!r}"
            )
    elif flow_run_id:
        mine = [
            r
            for r in client.list_runs(federation, limit=_SEARCH_LIMIT)
            if r.prefect_flow_run_id == flow_run_id
        ]
        if not mine:
            return None
        run = mine[0]
    else:
        return None
    if run.status == "created":
        client.finish_run(
            run.run_id, RunFinish(status="failed", reason="abandoned before it started")
        )
        return None
    if run.status == "failed":
        label_flow_run(run.spec, run.run_id)  # a retry's flow run is named after its run too
        no_more_retries()  # a retry would find it failed again
        raise RunFailed(f"run {run.run_id} failed earlier: {run.reason or 'no reason given'}")
    return run


def closed_rounds(client: CoordinatorClient, run_id: str) -> dict[int, RoundOut]:
    """The run's rounds that the service already closed, by number (an open one is rejoined)."""
    return {r.round: r for r in client.rounds(run_id) if r.status != "open"}


def wall_seconds(out: RoundOut) -> float:
    return (out.closed_at - out.opened_at).total_seconds() if out.closed_at else 0.0
