"""fedsilo's side of the peer comparison: the real deployment on 127.0.0.1.

A Prefect server, the aggregation service, one silo agent process per hospital and, for every
configuration, the coordinator flow as its own process (`bench/_ours_coordinator.py`). Each
agent reaches the service and the Prefect API through its own relay ports, so bytes are
counted per silo (service traffic and Prefect traffic separately). The federation is started
once and serves every configuration, as a deployment would.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from bench._heart_data import CONTRACT, Config, run_spec
from bench._procs import BENCH, HOST, Relay, free_port, start_relay, terminate
from flows.processes import TELEMETRY_OFF, Proc, start_prefect_server, start_service

ROOT = BENCH.parent


@dataclass
class OursFederation:
    workspace: Path
    url: str
    token_file: Path
    relay: Relay
    procs: list[Proc] = field(default_factory=list)

    @property
    def pids(self) -> list[int]:
        """Every long-running process of ours: Prefect server, service, agents (not the relay)."""
        return [p.popen.pid for p in self.procs]

    @property
    def names(self) -> dict[int, str]:
        return {p.popen.pid: p.name for p in self.procs}

    def stop(self) -> None:
        for p in reversed(self.procs):
            p.stop()
        self.relay.stop()


def _silo_toml(name: str, service_url: str, prefect_url: str) -> str:
    from schemas.contracts.loader import load_contract

    return (
        f'[silo]\nname = "{name}"\nfederation = "heart"\n\n'
        f'[data]\npath = "data.csv"\ncontract = "{CONTRACT}"\n'
        f'contract_version = "{load_contract(CONTRACT).version}"\n\n'  # the shipped one, pinned
        f'[service]\nurls = ["{service_url}"]\n\n[prefect]\napi_url = "{prefect_url}"\n\n'
        '[policy]\nallowed_models = ["logreg", "mlp"]\nmax_rounds_per_run = 1000\n'
    )


def start(
    workspace: Path, hospitals: dict[str, object], prefect_url: str | None = None
) -> OursFederation:
    """Start everything and enrol and approve the hospitals; `hospitals` maps name -> table.

    `prefect_url` (http://127.0.0.1:PORT/api) reuses a running Prefect server, which then is
    not counted in the memory figures; by default the federation starts its own.
    """
    from flows.contract_publish import publish_file
    from flows.service_client import CoordinatorClient
    from schemas.contracts.loader import CONTRACTS_DIR

    os.environ.update(TELEMETRY_OFF)
    procs: list[Proc] = []
    relay = None
    try:
        if prefect_url:
            prefect_port = int(prefect_url.split("://", 1)[1].split("/", 1)[0].rsplit(":", 1)[1])
        else:
            prefect_port = free_port()
            procs.append(start_prefect_server(workspace / "prefect", prefect_port))
        os.environ["PREFECT_API_URL"] = f"http://{HOST}:{prefect_port}/api"  # the coordinator's
        service_port = free_port()
        procs.append(start_service(workspace / "service", service_port))
        targets = {f"{h}:service": service_port for h in hospitals}
        targets |= {f"{h}:prefect": prefect_port for h in hospitals}
        relay = start_relay(targets, workspace / "relay.log")
        url = f"http://{HOST}:{service_port}"
        token_file = workspace / "service" / "admin.token"
        coord = CoordinatorClient(url, token=token_file.read_text().strip())
        coord.create_federation("heart")
        publish_file(  # the coordinator publishes the federation's contract (the shipped example)
            coord, "heart", CONTRACTS_DIR / "heart_disease.toml", workspace / "contract_ed25519.pem"
        )
        for name, frame in hospitals.items():
            folder = workspace / "silos" / name
            folder.mkdir(parents=True)
            frame.to_csv(folder / "data.csv", index=False)  # type: ignore[attr-defined]
            s_url = f"http://{HOST}:{relay.routes[f'{name}:service'][0]}"
            p_url = f"http://{HOST}:{relay.routes[f'{name}:prefect'][0]}/api"
            (folder / "silo.toml").write_text(_silo_toml(name, s_url, p_url))
            procs.append(_start_agent(folder / "silo.toml", p_url))
        deadline = time.monotonic() + 600  # a loaded 2-core machine is slow to import
        while len([s for s in coord.silos("heart") if s.status == "pending"]) < len(hospitals):
            if time.monotonic() > deadline:
                raise RuntimeError("silo agents did not enrol within 600 s; see silos/*/agent.log")
            time.sleep(0.2)
        for name in hospitals:
            coord.approve("heart", name)
        return OursFederation(workspace, url, token_file, relay, procs)
    except BaseException:
        for p in reversed(procs):
            p.stop()
        if relay:
            relay.stop()
        raise


def _start_agent(config: Path, prefect_url: str) -> Proc:
    from flows.processes import base_env, spawn

    env = base_env(PREFECT_API_URL=prefect_url)
    args = [sys.executable, "-m", "flows.cli", "silo", "start", "--config", str(config)]
    return spawn(f"silo agent {config.parent.name}", args, config.parent / "agent.log", env)


def run_config(
    fed: OursFederation, config: Config, rounds: int, tag: str = ""
) -> tuple[subprocess.Popen, Path]:
    """Launch the coordinator for one configuration; returns the process and its result path."""
    folder = fed.workspace / "runs" / f"{tag}{config.label.replace('/', '-')}"
    folder.mkdir(parents=True)
    spec_path = folder / "spec.json"
    spec_path.write_text(run_spec(config, rounds).model_dump_json())
    out = folder / "result.json"
    env = {**os.environ, **TELEMETRY_OFF, "PREFECT_API_URL": os.environ["PREFECT_API_URL"]}
    args = [
        sys.executable,
        str(BENCH / "_ours_coordinator.py"),
        "--service-url",
        fed.url,
        "--token-file",
        str(fed.token_file),
        "--spec",
        str(spec_path),
        "--out",
        str(out),
        "--models-dir",
        str(folder / "models"),
    ]
    with open(folder / "coordinator.log", "ab") as log:
        proc = subprocess.Popen(
            args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, cwd=ROOT
        )
    return proc, out


__all__ = ["OursFederation", "run_config", "start", "terminate"]
