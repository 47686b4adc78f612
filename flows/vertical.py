"""The coordinator's side of a vertical run: create it on the service, wait for its end.

The service only relays and records (aggregation/service/vertical_relay.py); the parties run
the protocol: each silo's agent picks the run up from its task poll and plays its role
(silos/vertical/agent_flow.py). This module asks for the run (train, or predict with a
trained run's model) and watches its progress: intersection, trees (SecureBoost) or epochs
(logistic regression) reported, the end. `fedsilo vertical train|predict` run the flow
`vertical-secureboost` (its name kept for deployments; it runs either model) once.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable

from prefect import flow, get_run_logger, task

from flows.admin_token import resolve_admin_token
from flows.service_client import CoordinatorClient
from schemas.url_path import query, seg
from schemas.vertical import VerticalParams, VerticalRunCreate, VerticalRunOut


def create_vertical_run(
    coord: CoordinatorClient,
    federation: str,
    active: str,
    parties: list[str],
    params: VerticalParams | None = None,
    model_run: str | None = None,
    size_only: bool = False,
) -> VerticalRunOut:
    """A training run; with `model_run` a prediction with that run's model; with
    `size_only` a count of the customers every party holds."""
    body = VerticalRunCreate(
        federation=federation,
        active=active,
        parties=parties,
        mode="predict" if model_run else ("psi_size" if size_only else "train"),
        params=params or VerticalParams(),
        model_run=model_run,
    )
    return VerticalRunOut.model_validate(coord._json("POST", "/v1/vertical/runs", body))


def vertical_run(coord: CoordinatorClient, run_id: str) -> VerticalRunOut:
    return VerticalRunOut.model_validate(coord._json("GET", f"/v1/vertical/runs/{seg(run_id)}"))


def list_vertical_runs(
    coord: CoordinatorClient, federation: str | None = None, limit: int = 50
) -> list[VerticalRunOut]:
    """The newest vertical runs first (of one federation, if named)."""
    q = query(limit=limit, federation=federation or None)
    return [VerticalRunOut.model_validate(x) for x in coord._json("GET", f"/v1/vertical/runs{q}")]


def cancel_vertical_run(coord: CoordinatorClient, run_id: str, reason: str) -> VerticalRunOut:
    body = {"reason": reason}
    return VerticalRunOut.model_validate(
        coord._json("POST", f"/v1/vertical/runs/{seg(run_id)}/cancel", body)
    )


def planned(params: VerticalParams) -> int:
    """The trees (SecureBoost) or epochs (logistic regression) a training run asks for."""
    return params.epochs if params.model == "logreg" else params.trees


def progress_line(run: VerticalRunOut, total: int) -> str:
    """One line of the run's state; `total` is the trees or epochs it trains (`planned`)."""
    psi = f"PSI {run.psi_size} rows" if run.psi_size is not None else "PSI pending"
    if run.mode == "train" and run.params.model == "logreg":
        done = f"epochs {run.epochs}/{total}"
    else:
        done = f"trees {run.trees}/{total}"
    return f"vertical run {run.run_id[:8]}: {psi}, {done}, {run.status}"


def wait_vertical(
    coord: CoordinatorClient,
    run_id: str,
    total: int,
    timeout_s: float,
    on_progress: Callable[[str], None] = print,
) -> VerticalRunOut:
    """Until the run is over (finished or failed), reporting each change; TimeoutError after
    `timeout_s` without an end."""
    deadline = time.monotonic() + timeout_s
    last = ""
    delay = 0.1
    while True:
        run = vertical_run(coord, run_id)
        line = progress_line(run, total)
        if line != last:
            on_progress(line)
            last, delay = line, 0.1
        if run.status != "running":
            return run
        if time.monotonic() > deadline:
            raise TimeoutError(f"vertical run {run_id} not over after {timeout_s:.0f}s: {line}")
        time.sleep(delay)  # the parties' pace, not ours: back off to 2 s while nothing changes
        delay = min(2.0, delay * 1.5)


def lineage_summary(coord: CoordinatorClient, run_id: str) -> dict[str, object]:
    """What the ledger says of the run: the intersection and, per tree, nodes per party
    (`splits_per_tree`), or for logistic regression each epoch's steps and rows (`epochs`)."""
    psi: dict[str, object] = {}
    trees: list[dict[str, int]] = []
    epochs: list[dict[str, int]] = []
    model = "secureboost"
    for entry in coord.ledger(run_id):
        payload = json.loads(entry.payload)
        if entry.kind == "vertical_started":
            model = (payload.get("params") or {}).get("model", model)
        elif entry.kind == "vertical_psi":
            psi[payload["party"]] = {"size": payload["size"], "digest": payload["digest"]}
        elif entry.kind == "vertical_tree":
            counts: dict[str, int] = {}
            for node in payload["nodes"]:
                counts[node["party"]] = counts.get(node["party"], 0) + 1
            trees.append(counts)
        elif entry.kind == "vertical_epoch":
            epochs.append({k: payload[k] for k in ("epoch", "steps", "rows")})
    if model == "logreg":
        return {"psi": psi, "epochs": epochs}
    return {"psi": psi, "splits_per_tree": trees}


def _client(
    service_url: list[str], token_file: str | None, token_block: str | None
) -> CoordinatorClient:
    token = resolve_admin_token(token_file, token_block)
    return CoordinatorClient(service_url, token=token, retry_for_s=30)


@task(name="create-vertical-run")  # no retries: a lost answer must not make two runs
def create(
    service_url: list[str],
    token_file: str | None,
    token_block: str | None,
    federation: str,
    active: str,
    parties: list[str],
    params: VerticalParams,
    model_run: str | None,
    size_only: bool,
) -> str:
    coord = _client(service_url, token_file, token_block)
    if model_run:  # a prediction states the trained model's kind (runs list, its ledger)
        params = VerticalParams(model=vertical_run(coord, model_run).params.model)
    run = create_vertical_run(coord, federation, active, parties, params, model_run, size_only)
    get_run_logger().info(
        "vertical run %s (%s) created: parties %s, active %s; their agents pick it up",
        run.run_id,
        run.mode,
        run.parties,
        run.active,
    )
    return run.run_id


@task(name="watch-vertical-run")
def watch(
    service_url: list[str],
    token_file: str | None,
    token_block: str | None,
    run_id: str,
    total: int,
    timeout_s: float,
) -> str:
    log = get_run_logger()
    coord = _client(service_url, token_file, token_block)
    try:
        run = wait_vertical(coord, run_id, total, timeout_s, log.info)
    except TimeoutError as exc:  # a party never came or stopped: free the others' agents
        cancel_vertical_run(coord, run_id, str(exc)[:500])
        raise
    return run.model_dump_json()


@flow(name="vertical-secureboost", log_prints=True)
def vertical_training(
    service_url: list[str],
    token_file: str | None,
    federation: str,
    active: str,
    parties: list[str],
    params: VerticalParams | None = None,
    model_run: str | None = None,
    timeout_s: float = 3600.0,
    token_block: str | None = None,
    size_only: bool = False,
) -> dict[str, object]:
    """Create a vertical run (training; with `model_run` a joint prediction with that run's
    model; with `size_only` only the intersection's size), let the parties' agents run it,
    watch it to its end and record what the ledger says of it (the service holds no key and
    the flow sees no data)."""
    params = params or VerticalParams()
    args = (service_url, token_file, token_block)
    run_id = create(*args, federation, active, parties, params, model_run, size_only)
    total = 0 if model_run or size_only else planned(params)
    run = VerticalRunOut.model_validate_json(watch(*args, run_id, total, timeout_s))
    if run.status != "finished":
        raise RuntimeError(f"vertical run {run_id} {run.status}: {run.reason}")
    coord = _client(*args)
    return {"run": run.model_dump(), **lineage_summary(coord, run_id)}
