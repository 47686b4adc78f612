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


class ScheduleError(ValueError):
    """A deployment setting Prefect would refuse; `field` names it (name, pool, cron,
    timezone), so the CLI can name its option."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


def checked_schedules(
    *, name: str, work_pool: str, cron: str | None, timezone: str | None
) -> list[Any]:
    """The deployment's schedules (none without `cron`), refusing what Prefect would refuse
    only after the work pool exists: a bad name, cron expression or zone (ScheduleError)."""
    from prefect.client.schemas.schedules import CronSchedule
    from prefect.schedules import Schedule
    from prefect.types import BANNED_CHARACTERS, NonEmptyishName
    from pydantic import TypeAdapter, ValidationError

    for field, value in (("name", name), ("pool", work_pool)):
        try:
            TypeAdapter(NonEmptyishName).validate_python(value)
        except ValidationError as exc:
            raise ScheduleError(
                field,
                f"{value!r} is no Prefect name: give a non-empty one without any of "
                f"{' '.join(BANNED_CHARACTERS)}",
            ) from exc
    if not cron:
        if timezone:  # there is no other schedule a zone could apply to
            raise ScheduleError(
                "timezone",
                "a zone applies to the cron schedule's times; give --cron too (without it "
                "the deployment runs only on demand)",
            )
        return []
    try:
        CronSchedule(cron=cron, timezone=timezone)  # croniter's and the tz database's verdict
    except ValidationError as exc:
        field = str(exc.errors()[0]["loc"][0])
        raise ScheduleError(field, _reason(exc)) from exc
    return [Schedule(cron=cron, timezone=timezone)]


def _reason(exc: Any) -> str:
    """A pydantic error's first message, without pydantic's "Value error, " prefix."""
    return str(exc.errors()[0]["msg"]).removeprefix("Value error, ")


def ensure_process_pool(name: str) -> bool:
    """Create the process work pool `name` unless it exists (True: it was created); refuse
    one of another type."""
    with get_client(sync_client=True) as client:
        try:
            pool = client.read_work_pool(name)
        except ObjectNotFound:
            client.create_work_pool(WorkPoolCreate(name=name, type="process"))
            return True
    if pool.type != "process":
        raise ValueError(
            f"work pool {name!r} exists with type {pool.type!r}; fedsilo's coordinator worker "
            "runs flow runs as local processes: choose another --pool name"
        )
    return False


def _delete_pool(name: str) -> None:
    with get_client(sync_client=True) as client:
        client.delete_work_pool(name)


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
    from flows.coordinator import federated_training

    if "admin_token" in parameters:
        raise ValueError(
            "pass admin_token_file or admin_token_block, not the token: Prefect stores and "
            "shows a deployment's parameters"
        )
    # everything Prefect could refuse is checked before the work pool is created
    schedules = checked_schedules(name=name, work_pool=work_pool, cron=cron, timezone=timezone)
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
    created = ensure_process_pool(work_pool)
    try:
        deployment_id = cast(UUID, deployment.apply(work_pool_name=work_pool))
    except BaseException:
        if created:  # a refused deployment leaves no pool of its own behind
            _delete_pool(work_pool)
        raise
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
    patience: int = 0,
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
        "patience": patience,
        "ready_timeout_s": ready_timeout_s,
        "output_dir": str(output_dir.resolve()),
        "secure_aggregation": {"enabled": secure},
    }
