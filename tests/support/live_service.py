"""A real aggregation service on 127.0.0.1 for tests: uvicorn in a thread (fast) or a
subprocess (for kill -9), plus signed clients. Imported by tests, not a fixture module."""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import uvicorn
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from aggregation.service.main import create_app
from aggregation.service.settings import ServiceSettings
from flows.service_client import CoordinatorClient
from schemas import tensors
from schemas.specs import RunSpec, param_shapes
from schemas.wire import RoundOpen, RunCreate
from silos.client import SiloClient
from silos.http_base import HttpBase


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def service_in_thread(workspace: Path, database_url: str, **settings: object) -> Iterator[str]:
    """Run the service with uvicorn in a background thread; yields its base URL.

    `settings` are further `ServiceSettings` fields (``admin_token`` defaults to the one
    `coordinator` uses)."""
    port = free_port()
    settings.setdefault("admin_token", "test-admin-token")
    cfg = ServiceSettings(workspace=workspace, database_url=database_url, port=port, **settings)  # type: ignore[arg-type]
    server = uvicorn.Server(
        uvicorn.Config(create_app(cfg), host="127.0.0.1", port=port, log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                break
        except httpx.TransportError:
            time.sleep(0.05)
    try:
        yield url
    finally:
        server.should_exit = True
        thread.join(10)


def coordinator(url: str, token: str = "test-admin-token") -> CoordinatorClient:
    return CoordinatorClient(url, token=token, retry_for_s=5)


# One contract key for every test federation: the service pins a federation's first signer.
TEST_CONTRACT_KEY = Ed25519PrivateKey.generate()


def publish_shipped_contract(coord: CoordinatorClient, federation: str, name: str) -> str:
    """Publish the shipped contract `name` (schemas/contracts/NAME.toml) in `federation`, signed
    with `TEST_CONTRACT_KEY`, as `fedsilo contract publish` would; returns its version."""
    from schemas.contract_registry import sign_contract
    from schemas.contracts.loader import CONTRACTS_DIR

    path = CONTRACTS_DIR / f"{name}.toml"
    contract, body = sign_contract(
        TEST_CONTRACT_KEY, federation, path.read_text(encoding="utf-8"), str(path)
    )
    coord.publish_contract(federation, body)
    return contract.version


# One key per silo name: on a hub a name belongs to one key, whatever the federation (the
# ledger names its authors silo:NAME), and the tests' federations reuse the names a, b, c.
SILO_KEYS: dict[str, Ed25519PrivateKey] = {}


def silo_key(name: str) -> Ed25519PrivateKey:
    return SILO_KEYS.setdefault(name, Ed25519PrivateKey.generate())


def write_silo_key(path: Path, name: str) -> None:
    """Put silo `name`'s one key where an agent's silo.toml looks for it (0600, as the agent
    writes it), unless a key is there already."""
    from cryptography.hazmat.primitives.serialization import (
        Encoding,
        NoEncryption,
        PrivateFormat,
    )

    if path.exists():
        return
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    pem = silo_key(name).private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(pem)


def enrolled_silo(
    url: str, coord: CoordinatorClient, federation: str, name: str, approve: bool = True
) -> SiloClient:
    client = SiloClient(url, federation=federation, silo=name, key=silo_key(name), retry_for_s=5)
    client.enrol()
    if approve:
        coord.approve(federation, name)
    return client


def started_run(coord: CoordinatorClient, spec: RunSpec) -> str:
    """Create a run of `spec` with an all-zero initial model, start it and open round 1; its
    id."""
    run = coord.create_run(RunCreate(spec=spec))
    zeros = {n: np.zeros(s, dtype=np.float32) for n, s in param_shapes(spec.torch_model)}
    coord.put_initial_model(run.run_id, tensors.encode(zeros))
    coord.start_run(run.run_id)
    coord.open_round(run.run_id, RoundOpen(round=1, deadline_s=600))
    return run.run_id


def recorded(
    client: HttpBase, keep: Callable[[str, str], bool], into: list[str] | None = None
) -> list[str]:
    """The paths of the requests `client` makes from now on for which `keep(method, path)`
    (appended to `into`, when given: one list for several clients)."""
    paths: list[str] = [] if into is None else into
    request = client.request

    def counted(method: str, path: str, *args: Any, **kwargs: Any) -> Any:
        if keep(method, path):
            paths.append(path)
        return request(method, path, *args, **kwargs)

    client.request = counted  # type: ignore[method-assign]
    return paths


def write_heart_silos(
    root: Path,
    service_urls: list[str],
    prefect_url: str,
    federation: str = "heart",
    policy: dict[str, str] | None = None,
    validated: bool = True,
) -> dict[str, Path]:
    """One folder per UCI hospital with its CSV and silo.toml; returns name -> config path.
    With `validated`, each workspace starts with the gate's verdict on its table
    (`support.gate_cache`): the agents do not run Great Expectations for an unchanged table."""
    from schemas.contracts.loader import load_contract
    from silos.demo_data import heart_disease_silos

    version = load_contract("heart_disease").version  # what `publish_shipped_contract` publishes
    urls = ", ".join(f'"{u}"' for u in service_urls)
    configs = {}
    for name, frame in heart_disease_silos().items():
        folder = root / name
        folder.mkdir(parents=True)
        frame.to_csv(folder / "data.csv", index=False)
        policy_text = (policy or {}).get(
            name, 'allowed_models = ["logreg", "mlp"]\nmax_rounds_per_run = 100'
        )
        (folder / "silo.toml").write_text(
            f'[silo]\nname = "{name}"\nfederation = "{federation}"\n\n'
            f'[data]\npath = "data.csv"\ncontract = "heart_disease"\n'
            f'contract_version = "{version}"\n\n'  # the shipped version, accepted by a pin
            f'[service]\nurls = [{urls}]\n\n[prefect]\napi_url = "{prefect_url}"\n\n'
            f"[policy]\n{policy_text}\n"
        )
        configs[name] = folder / "silo.toml"
    if validated:
        from support.gate_cache import seed_verdicts

        seed_verdicts(configs)
    return configs
