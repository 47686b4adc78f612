"""Production mode against real TLS connections: who may connect, and as whom."""

from __future__ import annotations

import ssl
from pathlib import Path

import httpx
import pytest
from pydantic import ValidationError
from tls_federation import coordinator, coordinator_tls, silo_client, silo_files
from typer.testing import CliRunner

from aggregation.service.settings import ServiceSettings
from flows.cli import app
from flows.federation_files import DEFAULT_HOSTS, init_federation
from schemas.specs import ModelSpec, RunSpec
from schemas.wire import RunCreate
from silos.client import SiloClient
from silos.client_errors import ServiceRejected, ServiceUnavailable
from silos.keys import load_or_create_key
from silos.tls_client import TlsFiles


def test_plain_http_to_the_tls_port_is_refused(prod_url: str, fed: Path, tmp_path: Path) -> None:
    plain = prod_url.replace("https://", "http://")
    with pytest.raises(httpx.TransportError):
        httpx.get(plain + "/healthz", timeout=5)
    files = silo_files(fed, tmp_path, "plainhttp")
    client = SiloClient(
        plain,
        federation="heart",
        silo="plainhttp",
        key=load_or_create_key(files.identity_key),
        retry_for_s=0.5,
    )
    with pytest.raises(ServiceUnavailable, match="production mode speaks only HTTPS"):
        client.enrol()


def test_https_without_a_client_certificate_is_refused(prod_url: str, fed: Path) -> None:
    context = ssl.create_default_context(cafile=str(fed / "coordinator" / "ca.pem"))
    with pytest.raises(httpx.TransportError):
        httpx.get(prod_url + "/healthz", verify=context, timeout=5)
    # the same call with the coordinator's certificate goes through
    ok = httpx.get(prod_url + "/healthz", verify=coordinator_tls(fed).context(), timeout=5)
    assert ok.json() == {"status": "ok", "mode": "production"}


def test_production_refuses_to_start_without_certificates(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="--tls-cert, --tls-key, --client-ca"):
        ServiceSettings(workspace=tmp_path, mode="production")
    result = CliRunner().invoke(
        app, ["aggregator", "serve", "--production", "--workspace", str(tmp_path)]
    )
    assert result.exit_code == 2
    assert "production mode serves HTTPS with client certificates only" in result.output


def test_certificate_from_another_ca_is_refused(prod_url: str, fed: Path, tmp_path: Path) -> None:
    other = tmp_path / "other-federation"
    init_federation(other, "heart", list(DEFAULT_HOSTS))  # same names, another CA
    files = silo_files(other, tmp_path / "silos", "cleveland")
    # trusting our CA for the server, presenting the other CA's client certificate
    tls = TlsFiles(fed / "coordinator" / "ca.pem", files.cert, files.tls_key)
    client = SiloClient(
        prod_url,
        federation="heart",
        silo="cleveland",
        key=load_or_create_key(files.identity_key),
        tls=tls,
        retry_for_s=0.5,
    )
    with pytest.raises(ServiceUnavailable, match="refuses client certificates"):
        client.enrol()
    # and the other CA's coordinator certificate cannot reach admin endpoints either
    with pytest.raises(ServiceUnavailable):
        coordinator(prod_url, other, retry_for_s=0.3).silos("heart")


def test_expired_certificate_is_refused(prod_url: str, fed: Path, tmp_path: Path) -> None:
    files = silo_files(fed, tmp_path, "expired", expired=True)
    with pytest.raises(ServiceUnavailable, match="refuses client certificates"):
        silo_client(prod_url, files, "expired", retry_for_s=0.5).enrol()


def test_revoked_silo_is_refused(prod_url: str, fed: Path, tmp_path: Path) -> None:
    files = silo_files(fed, tmp_path, "revokee")
    client = silo_client(prod_url, files, "revokee")
    client.enrol()
    coord = coordinator(prod_url, fed)
    coord.approve("heart", "revokee")
    assert client.whoami().status == "approved"
    result = CliRunner().invoke(
        app,
        ["silo", "revoke", "revokee", "--federation", "heart", "--service-url", prod_url],
        env={
            "FEDSILO_ADMIN_TOKEN": (fed / "coordinator" / "admin.token").read_text().strip(),
            "FEDSILO_TLS_CA": str(fed / "coordinator" / "ca.pem"),
            "FEDSILO_TLS_CERT": str(fed / "coordinator" / "coordinator.pem"),
            "FEDSILO_TLS_KEY": str(fed / "coordinator" / "coordinator.key"),
        },
    )
    assert result.exit_code == 0, result.output
    assert "revoked" in result.output
    with pytest.raises(ServiceRejected) as err:
        client.next_task(wait_s=0)
    assert err.value.status == 403 and "revoked" in str(err.value)
    with pytest.raises(ServiceRejected, match="revoked"):
        coord.approve("heart", "revokee")


def test_silo_cannot_act_for_another_silo(prod_url: str, fed: Path, tmp_path: Path) -> None:
    alice_files = silo_files(fed, tmp_path, "alice")
    bob_files = silo_files(fed, tmp_path, "bob")
    alice = silo_client(prod_url, alice_files, "alice")
    bob = silo_client(prod_url, bob_files, "bob")
    alice.enrol()
    bob.enrol()
    coord = coordinator(prod_url, fed)
    coord.approve("heart", "alice")
    coord.approve("heart", "bob")
    # holding bob's signing key is not enough: the connection's certificate is alice's
    as_bob = SiloClient(
        prod_url,
        federation="heart",
        silo="bob",
        key=load_or_create_key(bob_files.identity_key),
        tls=TlsFiles(alice_files.ca, alice_files.cert, alice_files.tls_key),
        retry_for_s=2,
    )
    with pytest.raises(ServiceRejected) as err:
        as_bob.whoami()
    assert err.value.status == 403
    assert "silo 'alice'" in str(err.value) and "cannot act as silo 'bob'" in str(err.value)
    with pytest.raises(ServiceRejected, match="cannot act as silo 'bob'"):
        as_bob.enrol()
    # an enrolment without signature headers is checked on its body
    body = {"federation": "heart", "silo": "bob", "public_key": "00" * 32, "proof": "00" * 64}
    resp = httpx.post(
        prod_url + "/v1/enrol",
        json=body,
        verify=TlsFiles(alice_files.ca, alice_files.cert, alice_files.tls_key).context(),
    )
    assert resp.status_code == 403 and "cannot enrol silo 'bob'" in resp.json()["detail"]
    # alice enrolling another Ed25519 key than the one the coordinator certified
    other_key = SiloClient(
        prod_url,
        federation="heart",
        silo="alice",
        key=load_or_create_key(tmp_path / "stray" / "key.pem"),
        tls=TlsFiles(alice_files.ca, alice_files.cert, alice_files.tls_key),
        retry_for_s=2,
    )
    with pytest.raises(ServiceRejected, match="not the one in its certificate"):
        other_key.enrol()
    # a statement naming another silo, over alice's own connection and signature
    spec = RunSpec(
        federation="heart",
        dataset="toy",
        model=ModelSpec(kind="logreg", n_features=3),
        silos=("alice", "bob"),
    )
    run_id = coord.create_run(RunCreate(spec=spec)).run_id
    with pytest.raises(ServiceRejected, match="names silo 'bob'"):
        alice.submit_statement(run_id, "privacy_spent", {"silo": "bob", "epsilon": 0.1})
    assert bob.whoami().name == "bob"  # bob itself is unaffected


def test_roles_are_not_interchangeable(prod_url: str, fed: Path, tmp_path: Path) -> None:
    files = silo_files(fed, tmp_path, "carol")
    token = (fed / "coordinator" / "admin.token").read_text().strip()
    silo_context = TlsFiles(files.ca, files.cert, files.tls_key).context()
    # a silo's certificate with the real admin token still cannot use coordinator endpoints
    resp = httpx.get(
        prod_url + "/v1/federations",
        headers={"Authorization": f"Bearer {token}"},
        verify=silo_context,
    )
    assert resp.status_code == 403 and "coordinator's certificate" in resp.json()["detail"]
    # the coordinator's certificate cannot sign as a silo
    as_silo = SiloClient(
        prod_url,
        federation="heart",
        silo="carol",
        key=load_or_create_key(files.identity_key),
        tls=coordinator_tls(fed),
        retry_for_s=2,
    )
    with pytest.raises(ServiceRejected, match="coordinator certificate cannot sign as a silo"):
        as_silo.whoami()
