"""Everything the aggregation service, a silo agent and the demo write is their owner's only.

A real `fedsilo aggregator serve` and a real `fedsilo silo start`, laid out by the demo's own
building blocks (`prepare_workspace`, `write_silo`), are started from a process whose umask
is the usual 022; once the silo is enrolled and approved, every file and folder under the
demo workspace (service database, keys, admin token, logs, the silo's data copy, silo.toml,
its workspace) must have no group or other permission bit.
"""

from __future__ import annotations

import os
import stat
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.fault_helpers import free_port
from support.stopping import stop_all

from flows.demo import prepare_workspace, write_silo
from flows.demo_datasets import DATASETS
from flows.processes import Proc, start_agent, start_service
from flows.service_client import CoordinatorClient

pytestmark = pytest.mark.integration


@pytest.fixture
def usual_umask() -> Iterator[None]:
    previous = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(previous)


def _loose(root: Path) -> list[str]:
    found = []
    for path in [root, *root.rglob("*")]:
        mode = path.lstat().st_mode
        if not stat.S_ISLNK(mode) and mode & 0o077:
            found.append(f"{stat.filemode(mode)} {path.relative_to(root)}")
    return found


def test_the_demo_lays_out_silos_owner_only(tmp_path: Path, usual_umask: None) -> None:
    data = DATASETS["heart"]
    ws = tmp_path / "demo"
    prepare_workspace(ws)
    frame = next(iter(data.frames().values()))
    write_silo(ws, data, "cleveland", frame, "http://127.0.0.1:1", "http://127.0.0.1:2/api")
    assert _loose(ws) == []


def test_service_and_agent_write_nothing_others_can_read(
    tmp_path: Path, prefect_api_url: str, usual_umask: None
) -> None:
    data = DATASETS["heart"]
    ws = tmp_path / "demo"
    prepare_workspace(ws)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    procs: list[Proc] = []
    try:
        procs.append(start_service(ws / "service", port))
        token = (ws / "service" / "admin.token").read_text().strip()
        coord = CoordinatorClient(url, token=token, retry_for_s=30)
        coord.create_federation(data.federation)
        name, frame = next(iter(data.frames().items()))
        config = write_silo(ws, data, name, frame, url, prefect_api_url)
        agent = start_agent(config, config.parent / "agent.log", prefect_api_url)
        procs.append(agent)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            status = {s.name: s.status for s in coord.silos(data.federation)}.get(name)
            if status == "pending":
                coord.approve(data.federation, name)
            if status == "approved" and "approved" in agent.log_tail():
                break
            assert agent.alive(), agent.log_tail()
            time.sleep(0.5)
        else:
            pytest.fail(f"silo {name} was not approved: {agent.log_tail()}")
    finally:
        stop_all(procs)
    assert (ws / "service" / "service.db").is_file()
    assert (config.parent / "workspace" / "keys" / "silo_ed25519.pem").is_file()
    assert _loose(ws) == []
