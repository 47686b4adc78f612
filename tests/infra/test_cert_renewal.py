"""Certificate renewal without downtime: `fedsilo federation renew-cert` replaces the running
production service's certificate; new connections get the new one, an open connection keeps
working, and the service never stops. A half-written renewal is refused and the old pair kept.
"""

from __future__ import annotations

import re
import signal
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from support.live_service import free_port

from aggregation.pki import issue_leaf, new_key, write_private_key
from aggregation.service.tls_reload import CertificateReloader
from flows.federation_files import init_federation, load_ca
from flows.processes import base_env, spawn

REPO = Path(__file__).resolve().parents[2]


def _serial_of_new_connection(port: int, fed: Path) -> int:
    ctx = ssl.create_default_context(cafile=str(fed / "coordinator" / "ca.pem"))
    ctx.load_cert_chain(
        fed / "coordinator" / "coordinator.pem", fed / "coordinator" / "coordinator.key"
    )
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
            der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der).serial_number


def _connection_serial(response: httpx.Response) -> int:
    der = response.extensions["network_stream"].get_extra_info("ssl_object").getpeercert(True)
    return x509.load_der_x509_certificate(der).serial_number


def _wait(condition, timeout_s: float, what: str, proc) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert proc.alive(), f"the service exited:\n{proc.log_tail(40)}"
        assert time.monotonic() < deadline, f"{what} within {timeout_s:.0f}s\n{proc.log_tail(40)}"
        time.sleep(0.2)


def _answers(port: int, fed: Path) -> bool:
    try:
        _serial_of_new_connection(port, fed)
        return True
    except OSError:
        return False


@pytest.mark.integration
def test_renew_cert_of_a_running_service_without_downtime(tmp_path: Path) -> None:
    fed = tmp_path / "fed"
    init_federation(fed, "heart", ["127.0.0.1"], days=30)
    svc, coord = fed / "service", fed / "coordinator"
    port = free_port()
    args = [sys.executable, "-m", "flows.cli", "aggregator", "serve", "--production"]
    args += ["--port", str(port), "--workspace", str(tmp_path / "ws")]
    args += ["--tls-cert", str(svc / "service.pem"), "--tls-key", str(svc / "service.key")]
    args += ["--client-ca", str(svc / "ca.pem"), "--admin-token-file", str(svc / "admin.token")]
    proc = spawn("service", args, tmp_path / "service.log", base_env())
    try:
        _wait(lambda: _answers(port, fed), 180, "the service answering over TLS", proc)
        old = _serial_of_new_connection(port, fed)
        tls = ssl.create_default_context(cafile=str(coord / "ca.pem"))
        tls.load_cert_chain(coord / "coordinator.pem", coord / "coordinator.key")
        with httpx.Client(base_url=f"https://127.0.0.1:{port}", verify=tls) as kept:
            before = kept.get("/healthz")
            assert before.status_code == 200 and _connection_serial(before) == old
            # the renewal runs while the open connection keeps being used (uvicorn would close
            # it after 30 s idle, which is not what this checks)
            renewal = subprocess.Popen(
                [sys.executable, "-m", "flows.cli", "federation", "renew-cert", "--dir", str(fed)],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                env=base_env(),
                cwd=REPO,
            )
            while renewal.poll() is None:
                assert _connection_serial(kept.get("/healthz")) == old
                time.sleep(1)
            stdout, stderr = renewal.communicate()
            assert renewal.returncode == 0, stderr
            found = re.search(r"serial ([0-9a-f]+)", stdout)
            assert found, stdout
            new = int(found.group(1), 16)
            assert new != old

            def renewed() -> bool:
                # the connection opened before the renewal is still up, on its old certificate
                assert _connection_serial(kept.get("/healthz")) == old
                return _serial_of_new_connection(port, fed) == new

            _wait(renewed, 60, "a new connection presenting the renewed certificate", proc)
        assert proc.alive()
        # not due: --within-days leaves a certificate valid for a year alone
        again = subprocess.run(
            [sys.executable, "-m", "flows.cli", "federation", "renew-cert", "--dir", str(fed),
             "--within-days", "30"],
            capture_output=True, text=True, timeout=120, env=base_env(), cwd=REPO, check=False,
        )  # fmt: skip
        assert again.returncode == 0 and "not due for renewal" in again.stdout, again.stderr
        # SIGHUP reloads at once (systemctl reload): same files, one more reload logged
        proc.popen.send_signal(signal.SIGHUP)
        _wait(lambda: "reload 2" in proc.log_path.read_text(), 60, "the SIGHUP reload", proc)
        assert _serial_of_new_connection(port, fed) == new and proc.alive()
    finally:
        proc.stop()


def test_a_half_written_renewal_keeps_the_old_certificate(tmp_path: Path) -> None:
    fed = tmp_path / "fed"
    init_federation(fed, "heart", ["127.0.0.1"], days=30)
    svc = fed / "service"
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(svc / "service.pem", svc / "service.key")
    reloader = CertificateReloader(
        context, svc / "service.pem", svc / "service.key", svc / "ca.pem"
    )
    ca, _, _ = load_ca(fed)
    write_private_key(svc / "service.key", new_key())  # the key landed, its certificate not yet
    assert reloader.changed()
    assert reloader.reload() is False and reloader.reloads == 0
    issued = issue_leaf(
        ca, "fedsilo aggregation service", server_hosts=["127.0.0.1"], unit="service"
    )
    issued.write(svc / "service.pem", svc / "service.key")
    assert reloader.reload() is True and reloader.reloads == 1
    assert not reloader.changed()
