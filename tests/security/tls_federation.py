"""A federation with real certificates and a production-mode service (mutual TLS) on
127.0.0.1, for the security tests. Imported by tests, not a fixture module."""

from __future__ import annotations

import datetime
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import uvicorn
from support.live_service import free_port

from aggregation.pki import issue_silo_cert, read_silo_csr, write_cert
from aggregation.service.main import create_app
from aggregation.service.settings import ServiceSettings
from aggregation.service.tls import uvicorn_config
from flows.federation_files import SiloFiles, load_ca, make_silo_request, sign_csr
from flows.service_client import CoordinatorClient
from silos.client import SiloClient
from silos.keys import load_or_create_key
from silos.tls_client import TlsFiles


def coordinator_tls(fed: Path) -> TlsFiles:
    d = fed / "coordinator"
    return TlsFiles(d / "ca.pem", d / "coordinator.pem", d / "coordinator.key")


@contextmanager
def production_service(
    workspace: Path, database_url: str, fed: Path, **settings: object
) -> Iterator[str]:
    """The service in production mode (uvicorn in a thread, TLS as `aggregator serve` runs
    it); yields its https:// base URL once it answers the coordinator."""
    port = free_port()
    cfg = ServiceSettings(
        workspace=workspace,
        database_url=database_url,
        port=port,
        mode="production",
        tls_cert=fed / "service" / "service.pem",
        tls_key=fed / "service" / "service.key",
        client_ca=fed / "service" / "ca.pem",
        admin_token_file=fed / "service" / "admin.token",
        **settings,
    )  # type: ignore[arg-type]
    server = uvicorn.Server(uvicorn_config(create_app(cfg), cfg, timeout_graceful_shutdown=1))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"https://127.0.0.1:{port}"
    context = coordinator_tls(fed).context()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + "/healthz", timeout=1, verify=context).status_code == 200:
                break
        except httpx.TransportError:
            time.sleep(0.05)
    else:
        raise RuntimeError(f"production service on {url} did not start")
    try:
        yield url
    finally:
        server.should_exit = True
        thread.join(10)


def coordinator(url: str, fed: Path, retry_for_s: float = 3.0) -> CoordinatorClient:
    token = (fed / "coordinator" / "admin.token").read_text().strip()
    return CoordinatorClient(url, token=token, retry_for_s=retry_for_s, tls=coordinator_tls(fed))


def silo_files(
    fed: Path,
    root: Path,
    name: str,
    federation: str = "heart",
    expired: bool = False,
    replace: bool = False,
) -> SiloFiles:
    """A silo's keys, CSR and certificate, made by the same code as `fedsilo silo enrol` and
    `fedsilo federation sign-csr` (or an already-expired certificate from the same CA)."""
    files = SiloFiles.in_dir(root / name)
    token = (fed / "ca" / "enrolment.token").read_text().strip()
    make_silo_request(files, federation, name, token, load_or_create_key(files.identity_key))
    if expired:
        ca, fed_name, token = load_ca(fed)
        req = read_silo_csr(files.csr.read_bytes(), federation=fed_name, token=token)
        past = datetime.datetime.now(datetime.UTC) - datetime.timedelta(days=1)
        write_cert(files.cert, issue_silo_cert(ca, req, not_after=past))
        write_cert(files.ca, ca.cert)
    else:
        sign_csr(fed, files.csr, files.cert, days=30, replace=replace)
    return files


def silo_client(
    url: str | list[str], files: SiloFiles, name: str, federation: str = "heart", **kw: object
) -> SiloClient:
    return SiloClient(
        url,
        federation=federation,
        silo=name,
        key=load_or_create_key(files.identity_key),
        tls=TlsFiles(files.ca, files.cert, files.tls_key),
        **{"retry_for_s": 2.0, **kw},  # type: ignore[arg-type]
    )
