"""The coordinator's side of a vertical run: create it on the service, wait for its end.

The service only relays and records (aggregation/service/vertical_relay.py); the parties run
the protocol (`python -m silos.vertical.agent_role`). This module asks for the run and
watches its progress: intersection, trees reported, the end.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable

from prefect import flow, get_run_logger, task

from flows.admin_token import read_token_file
from flows.service_client import CoordinatorClient
from schemas.vertical import VerticalRunCreate, VerticalRunOut


def create_vertical_run(
    coord: CoordinatorClient, federation: str, active: str, parties: list[str]
) -> VerticalRunOut:
    body = VerticalRunCreate(federation=federation, active=active, parties=parties)
    return VerticalRunOut.model_validate(coord._json("POST", "/v1/vertical/runs", body))


def vertical_run(coord: CoordinatorClient, run_id: str) -> VerticalRunOut:
    return VerticalRunOut.model_validate(coord._json("GET", f"/v1/vertical/runs/{run_id}"))


def progress_line(run: VerticalRunOut, n_trees: int) -> str:
    psi = f"PSI {run.psi_size} rows" if run.psi_size is not None else "PSI pending"
    return f"vertical run {run.run_id[:8]}: {psi}, trees {run.trees}/{n_trees}, {run.status}"


def wait_vertical(
    coord: CoordinatorClient,
    run_id: str,
    n_trees: int,
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
        line = progress_line(run, n_trees)
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
    """What the ledger says of the run: the intersection and, per tree, nodes per party."""
    psi: dict[str, object] = {}
    trees: list[dict[str, int]] = []
    for entry in coord.ledger(run_id):
        payload = json.loads(entry.payload)
        if entry.kind == "vertical_psi":
            psi[payload["party"]] = {"size": payload["size"], "digest": payload["digest"]}
        elif entry.kind == "vertical_tree":
            counts: dict[str, int] = {}
            for node in payload["nodes"]:
                counts[node["party"]] = counts.get(node["party"], 0) + 1
            trees.append(counts)
    return {"psi": psi, "splits_per_tree": trees}


@task
def watch(service_url: str, token_file: str, run_id: str, n_trees: int, timeout_s: float) -> str:
    log = get_run_logger()
    coord = CoordinatorClient(service_url, token=read_token_file(token_file), retry_for_s=30)
    run = wait_vertical(coord, run_id, n_trees, timeout_s, log.info)
    return run.model_dump_json()


@flow(name="vertical-secureboost", log_prints=True)
def vertical_training(
    service_url: str, token_file: str, run_id: str, n_trees: int, timeout_s: float = 3600.0
) -> dict[str, object]:
    """Coordinate a vertical run the parties are running: watch it to its end and record what
    the ledger says of it (the service holds no key and the flow sees no data)."""
    run = VerticalRunOut.model_validate_json(
        watch(service_url, token_file, run_id, n_trees, timeout_s)
    )
    if run.status != "finished":
        raise RuntimeError(f"vertical run {run_id} {run.status}: {run.reason}")
    coord = CoordinatorClient(service_url, token=read_token_file(token_file), retry_for_s=30)
    return {"run": run.model_dump(), **lineage_summary(coord, run_id)}
