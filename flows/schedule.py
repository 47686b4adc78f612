"""Scheduled training: a Prefect deployment of the coordinator flow on a process work pool.

`fedsilo schedule` creates (or updates) the work pool and the deployment; a worker started
with `prefect worker start --pool POOL` on the coordinator's machine then runs each scheduled
flow run in a subprocess. The deployment's entrypoint is the installed `flows.coordinator`
module, so the worker needs fedsilo installed and nothing else: no code is uploaded, and the
admin token stays in a 0600 file on the worker's machine or in a Prefect Secret block: only the
file's path or the block's name is a parameter (flows/admin_token.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast
from uuid import UUID

from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import WorkPoolCreate
from prefect.deployments.runner import EntrypointType, RunnerDeployment
from prefect.exceptions import ObjectNotFound

ENTRYPOINT = "flows.coordinator.federated_training"


@dataclass(frozen=True)
class Scheduled:
    deployment_id: UUID
    name: str
    work_pool: str

    @property
    def full_name(self) -> str:
        return f"federated_training/{self.name}"

    def worker_command(self) -> str:
        return f"prefect worker start --pool {self.work_pool} --type process"

    def run_now_command(self) -> str:
        return f"prefect deployment run '{self.full_name}'"


def ensure_process_pool(name: str) -> None:
    """Create the process work pool `name` unless it exists; refuse one of another type."""
    with get_client(sync_client=True) as client:
        try:
            pool = client.read_work_pool(name)
        except ObjectNotFound:
            client.create_work_pool(WorkPoolCreate(name=name, type="process"))
            return
    if pool.type != "process":
        raise ValueError(
            f"work pool {name!r} exists with type {pool.type!r}; fedsilo's coordinator worker "
            "runs flow runs as local processes: choose another --pool name"
        )


def schedule_training(
    *,
    name: str,
    work_pool: str,
    parameters: dict[str, Any],
    cron: str | None = None,
    timezone: str | None = None,
    paused: bool = False,
) -> Scheduled:
    """Create or update the deployment `federated_training/NAME` with a cron schedule (or none,
    for runs triggered by hand or by automations) on the process pool `work_pool`."""
    from prefect.client.schemas.schedules import CronSchedule
    from prefect.schedules import Schedule

    from flows.coordinator import federated_training

    if "admin_token" in parameters:
        raise ValueError(
            "pass admin_token_file or admin_token_block, not the token: Prefect stores and "
            "shows a deployment's parameters"
        )
    ensure_process_pool(work_pool)
    if cron:
        CronSchedule(cron=cron)  # a malformed expression fails here with croniter's reason
    schedules = [Schedule(cron=cron, timezone=timezone)] if cron else []
    # Prefect's sync/async dual methods type as either; called from sync code they are sync
    deployment = cast(
        RunnerDeployment,
        federated_training.to_deployment(
            name=name,
            parameters=parameters,
            schedules=schedules,
            paused=paused,
            description="fedsilo federated training, created by `fedsilo schedule`",
            entrypoint_type=EntrypointType.MODULE_PATH,
            # the flow runs add model:.. and run:.. once they know them (flows/run_naming.py)
            tags=["fedsilo", *_parameter_tags(parameters)],
            work_pool_name=work_pool,
        ),
    )
    deployment_id = cast(UUID, deployment.apply(work_pool_name=work_pool))
    return Scheduled(deployment_id=deployment_id, name=name, work_pool=work_pool)


def _parameter_tags(parameters: dict[str, Any]) -> list[str]:
    return [f"{k}:{parameters[k]}" for k in ("federation", "dataset") if parameters.get(k)]


def deployment_parameters(
    *,
    service_urls: list[str],
    token_file: Path | None,
    federation: str,
    dataset: str,
    model: dict[str, Any],
    strategy: dict[str, Any],
    training: dict[str, Any],
    rounds: int,
    min_silos: int,
    round_deadline_s: float,
    output_dir: Path,
    ready_timeout_s: float = 900.0,
    secure: bool = True,
    token_block: str | None = None,
) -> dict[str, Any]:
    """The flow's parameters as JSON: paths are made absolute for the worker's process.

    The admin token is named by `token_file` (its path) or `token_block` (a Prefect Secret
    block's name), never given: Prefect stores a deployment's parameters.
    """
    if (token_file is None) == (token_block is None):
        raise ValueError("give the admin token's file or its Secret block, exactly one")
    source = (
        {"admin_token_file": str(token_file.resolve())}
        if token_file is not None
        else {"admin_token_block": token_block}
    )
    return {
        "service_urls": service_urls,
        **source,
        "federation": federation,
        "dataset": dataset,
        "model": model,
        "strategy": strategy,
        "training": training,
        "rounds": rounds,
        "min_silos": min_silos,
        "round_deadline_s": round_deadline_s,
        "ready_timeout_s": ready_timeout_s,
        "output_dir": str(output_dir.resolve()),
        "secure_aggregation": {"enabled": secure},
    }
