"""A vertical run served by the silo agent (`fedsilo silo start`), as one Prefect flow run.

The service offers the agent a `VerticalTask` when a vertical run names its silo as a party
and it has not joined yet (aggregation/service/tasks.py). The agent checks the request
against its own policy (`[vertical]` in silo.toml: a silo without one takes no part; a run
asking for a model outside `models`, more trees than `max_trees` or more epochs than
`max_epochs` is refused), checks its table against its vertical
contract, then plays its role over the relay with code installed here (agent_role.py: PSI,
then SecureBoost or logistic regression, or in a size-only run the count alone;
predict_role.py: joint prediction with the model half a training run left in
WORKSPACE/vertical/RUN). Only outbound calls.
Any refusal is reported as the run's failure naming this silo, and the flow run ends Failed.
"""

from __future__ import annotations

import logging
from pathlib import Path

from prefect import flow, get_run_logger, tags, task
from prefect.cache_policies import NO_CACHE
from prefect.client.schemas.objects import State
from prefect.states import Failed

from schemas.tasks import VerticalTask
from schemas.vertical import RunFailed, VerticalRunOut
from schemas.vertical_contract import load_vertical_contract
from silos.agent_client import make_client
from silos.client import SiloClient
from silos.client_errors import ClientError
from silos.config import SiloConfig, VerticalSection, load_silo_config
from silos.flow_report import untagged_task_runs
from silos.vertical import agent_role, predict_role
from silos.vertical.agent_role import PartyData, RoleError
from silos.vertical.interrupted import serving

log = logging.getLogger("fedsilo.silo")


def run_folder(config: SiloConfig, run_id: str) -> Path:
    """Where this silo keeps its half of a vertical run's model and its outputs."""
    return config.workspace / "vertical" / run_id


def refusal(config: SiloConfig, run: VerticalRunOut) -> str | None:
    """Why this silo's policy refuses `run`, or None."""
    v = config.vertical
    me = config.silo.name
    if v is None:
        return f"silo {me!r} has no [vertical] section in its silo.toml: it takes no vertical run"
    p = run.params
    if run.mode == "train" and p.model not in v.models:
        return (
            f"silo {me!r} trains {', '.join(v.models)} in vertical runs ([vertical] models); "
            f"run {run.run_id} asks for {p.model}"
        )
    if run.mode == "train" and p.model == "secureboost" and p.trees > v.max_trees:
        return (
            f"silo {me!r} allows at most {v.max_trees} trees ([vertical] max_trees); "
            f"run {run.run_id} asks for {p.trees}"
        )
    if run.mode == "train" and p.model == "logreg" and p.epochs > v.max_epochs:
        return (
            f"silo {me!r} allows at most {v.max_epochs} epochs ([vertical] max_epochs); "
            f"run {run.run_id} asks for {p.epochs}"
        )
    wants_rows = run.mode == "predict" or run.params.predict
    if wants_rows and v.predict_data is None:
        return f"silo {me!r} has no rows to predict: set [vertical] predict_data in its silo.toml"
    if run.mode == "predict":
        assert run.model_run is not None
        if not (run_folder(config, run.model_run) / "traffic.json").is_file():
            return f"silo {me!r} holds no model half of vertical run {run.model_run}"
    return None


@task(cache_policy=NO_CACHE, name="vertical-check-request")
def check_request(config: SiloConfig, run: VerticalRunOut) -> None:
    reason = refusal(config, run)
    if reason:
        raise RoleError(reason)
    get_run_logger().info(
        "vertical run %s (%s): parties %s, active %s, %s",
        run.run_id,
        run.mode,
        run.parties,
        run.active,
        run.params.model_dump(),
    )


@task(cache_policy=NO_CACHE, name="vertical-check-data")
def check_data(v: VerticalSection, predict: bool) -> PartyData:
    """The table (or the rows to predict) checked against the silo's vertical contract."""
    contract = load_vertical_contract(v.contract)
    path = v.predict_data if predict else v.data
    assert path is not None
    data = agent_role.load_checked(path, contract, predict=predict)
    get_run_logger().info(
        "%s: %d rows passed vertical contract %s %s (%d features)",
        path,
        len(data.ids),
        contract.name,
        contract.version,
        len(data.columns),
    )
    return data


@task(cache_policy=NO_CACHE, name="vertical-intersect")
def intersect(client: SiloClient, run_id: str, data: PartyData) -> agent_role.Joined:
    joined = agent_role.join(client, run_id, data)
    get_run_logger().info("intersection: %d rows aligned", len(joined.X))
    return joined


@task(cache_policy=NO_CACHE, name="vertical-train")
def train(
    joined: agent_role.Joined, run: VerticalRunOut, out: Path, predict: PartyData | None
) -> str:
    """SecureBoost or logistic regression, as the run asks."""
    role = agent_role.train(joined, agent_role.model_params(run.params), out, predict=predict)
    get_run_logger().info("%s party done (%s); model half in %s", role, run.params.model, out)
    return role


@task(cache_policy=NO_CACHE, name="vertical-joint-predict")
def joint_predict(client: SiloClient, config: SiloConfig, run: VerticalRunOut) -> str:
    v = config.vertical
    assert v is not None and v.predict_data is not None and run.model_run is not None
    folder = run_folder(config, run.model_run)
    role = predict_role.predict(client, run.run_id, v.predict_data, v.contract, folder)
    get_run_logger().info("%s party done; predictions beside the model in %s", role, folder)
    return role


@task(cache_policy=NO_CACHE, name="vertical-count-common")
def count_common(client: SiloClient, run_id: str, data: PartyData) -> str:
    size = agent_role.count_common(client, run_id, data.ids)
    get_run_logger().info("%d of this party's %d ids are held by every party", size, len(data.ids))
    return "counted"


@flow(name="silo-vertical", log_prints=True)
def silo_vertical_flow(config_path: str, run: VerticalRunOut) -> dict[str, object] | State:
    """This silo's part in one vertical run: policy, contract, then its role over the relay."""
    with untagged_task_runs():  # the flow run is tagged; its task runs are not
        config = load_silo_config(config_path)
        client = make_client(config)
        try:
            check_request(config, run)
            v = config.vertical
            assert v is not None
            if run.mode == "predict":
                role = joint_predict(client, config, run)
            elif run.mode == "psi_size":
                role = count_common(client, run.run_id, check_data(v, predict=False))
            else:
                data = check_data(v, predict=False)
                rows = check_data(v, predict=True) if run.params.predict else None
                joined = intersect(client, run.run_id, data)
                role = train(joined, run, run_folder(config, run.run_id), rows)
        except Exception as exc:  # any refusal ends the run for every party, naming this silo
            reason = f"{type(exc).__name__}: {exc}"[:2000]
            agent_role.report(client, run.run_id, RunFailed(reason=reason))
            return Failed(message=f"silo {client.silo} failed vertical run {run.run_id}: {reason}")
        return {"run_id": run.run_id, "mode": run.mode, "role": role}


def serve_vertical(config: SiloConfig, work: VerticalTask) -> State:
    """Run `silo_vertical_flow` for `work` as ``<silo>-<run id>`` with the silo's tags; its
    final state. Never raises: the agent goes on serving whatever happened to this run."""
    run, me = work.vertical, config.silo.name
    name = f"{me}-{run.run_id}"
    labels = [f"federation:{config.silo.federation}", f"silo:{config.silo.name}"]
    labels += ["vertical", f"mode:{run.mode}", f"run:{run.run_id}"]
    log.info("silo %s: joining vertical run %s (%s)", config.silo.name, run.run_id, run.mode)
    try:
        with tags(*labels), serving(config.workspace, run.run_id):
            state: State = silo_vertical_flow.with_options(flow_run_name=name)(
                config_path=str(config.source), run=run, return_state=True
            )
    except Exception as exc:  # no flow run (Prefect unreachable, ...): the others must not wait
        reason = f"silo {config.silo.name!r} could not run its part: {type(exc).__name__}: {exc}"
        log.warning("%s (vertical run %s)", reason, run.run_id)
        try:
            agent_role.report(make_client(config), run.run_id, RunFailed(reason=reason[:2000]))
        except ClientError as refused:  # the agent keeps serving either way
            log.warning("silo %s: the service took no failure report: %s", me, refused)
        return Failed(message=reason)
    log.info(
        "silo %s: its part of vertical run %s ended %s: %s",
        config.silo.name,
        run.run_id,
        state.type.value,
        state.message or "",
    )
    return state
