"""Hostile input at a production service: oversized and malformed bodies, names that would
escape a folder, and SQL-significant characters (stored verbatim, never interpreted)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import AttributeOID, NameOID
from tls_federation import (
    coordinator,
    coordinator_tls,
    production_service,
    silo_client,
    silo_files,
)

from aggregation.pki import ED25519_URI_PREFIX, PkiError, enrolment_mac, new_key
from flows.federation_files import init_federation, sign_csr
from schemas import signing
from schemas.specs import ModelSpec, RunSpec, SecureAggregationSpec
from schemas.tasks import TASK_ADAPTER
from schemas.wire import WIRE_HEADER, WIRE_VERSION, RunCreate
from silos.client_errors import ServiceRejected
from silos.config import load_silo_config
from silos.exceptions import SiloConfigError
from silos.tls_client import TlsFiles

WIRE = {WIRE_HEADER: str(WIRE_VERSION)}  # raw requests speak the wire version too


@pytest.fixture(scope="module")
def approved(prod_url: str, fed: Path, tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    files = silo_files(fed, tmp_path_factory.mktemp("silos"), "inputs")
    client = silo_client(prod_url, files, "inputs")
    client.enrol()
    coordinator(prod_url, fed).approve("heart", "inputs")
    return files, client


def test_oversized_bodies_are_refused(prod_url: str, approved) -> None:  # type: ignore[no-untyped-def]
    files, client = approved
    big = b"x" * (300 * 1024)  # the fixture's service accepts 256 KiB
    with pytest.raises(ServiceRejected) as err:
        client.submit_update("some-run", 1, big)
    assert err.value.status == 413 and "exceeds the limit" in str(err.value)
    # enrolment bodies are bounded too, before any parsing
    context = TlsFiles(files.ca, files.cert, files.tls_key).context()
    resp = httpx.post(prod_url + "/v1/enrol", content=big, verify=context)
    assert resp.status_code == 413
    assert client.whoami().status == "approved"  # nothing else changed


def test_malformed_bodies_are_refused(prod_url: str, fed: Path, approved) -> None:  # type: ignore[no-untyped-def]
    files, client = approved
    # a run of this silo's: a silo's body is parsed only once it is known to take part
    spec = RunSpec(
        federation="heart",
        dataset="toy",
        model=ModelSpec(kind="logreg", n_features=3),
        silos=("inputs",),
        min_silos=1,
        secure_aggregation=SecureAggregationSpec(enabled=False),  # one silo: no secure sums
    )
    run_id = coordinator(prod_url, fed).create_run(RunCreate(spec=spec)).run_id
    context = TlsFiles(files.ca, files.cert, files.tls_key).context()
    resp = httpx.post(
        prod_url + "/v1/enrol",
        content=b"{not json",
        headers={"content-type": "application/json", **WIRE},
        verify=context,
    )
    assert resp.status_code == 422
    bad_proof = {
        "federation": "heart",
        "silo": "inputs",
        "public_key": client.public_key_hex(),
        "proof": "zz",
    }
    resp = httpx.post(prod_url + "/v1/enrol", json=bad_proof, headers=WIRE, verify=context)
    assert resp.status_code == 422 and "proof of key possession" in resp.text
    with pytest.raises(ServiceRejected) as err:
        client.request(
            "POST", f"/v1/silo/runs/{run_id}/rounds/1/evaluation", body=b"\xff\x00garbage"
        )
    assert err.value.status == 422 and "malformed" in str(err.value)
    with pytest.raises(ServiceRejected) as err:  # a run it has no part in: refused unread
        client.request("POST", "/v1/silo/runs/r1/rounds/1/evaluation", body=b"\xff\x00garbage")
    assert err.value.status == 404 and "'r1' does not exist" in str(err.value)
    # a signature that is not hex, a timestamp that is not a time
    headers = {
        signing.HEADER_FEDERATION: "heart",
        signing.HEADER_SILO: "inputs",
        signing.HEADER_TIMESTAMP: "yesterday",
        signing.HEADER_NONCE: "n1",
        signing.HEADER_SIGNATURE: "not-hex",
        **WIRE,
    }
    resp = httpx.get(prod_url + "/v1/silo/me", headers=headers, verify=context)
    assert resp.status_code == 401 and "not ISO 8601" in resp.text


def test_names_that_would_escape_a_folder_are_refused(
    prod_url: str, fed: Path, tmp_path: Path
) -> None:
    coord = coordinator(prod_url, fed)
    for name in ("../../etc", "a/b", ".hidden", "..", "x" * 65):
        with pytest.raises(ServiceRejected) as err:
            coord.create_federation(name)
        assert err.value.status == 422
    # a run id is part of a model file's path: an unknown one writes nothing anywhere. The
    # whole session's temporary folder is searched for what the request names ("escape"),
    # not compared before and after: other xdist workers write model files there meanwhile
    base = tmp_path.parent.parent
    context = coordinator_tls(fed).context()
    token = (fed / "coordinator" / "admin.token").read_text().strip()
    resp = httpx.put(
        prod_url + "/v1/runs/..%2F..%2F..%2Fescape/models/0",
        content=b"payload",
        headers={"Authorization": f"Bearer {token}", **WIRE},
        verify=context,
    )
    assert resp.status_code in (404, 422)
    # os.walk, not rglob: it skips folders that other workers remove while it walks
    assert not [d for d, names, files in os.walk(base) if "escape" in names + files]
    assert not [p for p in base.parent.iterdir() if p.name == "escape"]
    # coordinator side: federation names and CSR names become file names
    with pytest.raises(PkiError, match="not allowed"):
        init_federation(tmp_path / "f", "../outside", ["127.0.0.1"])
    assert not (tmp_path / "outside").exists()
    csr_path = tmp_path / "evil.csr"
    csr_path.write_bytes(_csr_with_name(fed, "../../../pwned"))
    with pytest.raises(PkiError, match="not allowed"):
        sign_csr(fed, csr_path, tmp_path / "out.pem", days=1, replace=False)
    assert not list(fed.parent.rglob("pwned*")) and not (tmp_path / "out.pem").exists()
    # silo side: the silo's own config
    config = tmp_path / "silo.toml"
    config.write_text(
        '[silo]\nname = "../x"\nfederation = "heart"\n[data]\npath = "d.csv"\n'
        'contract = "heart_disease"\n[service]\nurls = ["http://127.0.0.1:1"]\n'
    )
    with pytest.raises(SiloConfigError, match="silo.name"):
        load_silo_config(config)


def test_silo_refuses_a_task_whose_run_id_is_a_path() -> None:
    with pytest.raises(ValueError):
        TASK_ADAPTER.validate_python(
            {"type": "run_ended", "run_id": "../../../home/silo/.ssh/x", "run_status": "failed"}
        )
    # the same task with a plain run id is fine: the refusal above is the path's
    TASK_ADAPTER.validate_python({"type": "run_ended", "run_id": "r1", "run_status": "failed"})


def _csr_with_name(fed: Path, silo: str) -> bytes:
    """A CSR with a valid enrolment MAC whose silo name is a path (as an attacker who holds
    the token could craft it, bypassing `fedsilo silo enrol`'s own check)."""
    token = (fed / "ca" / "enrolment.token").read_text().strip()
    key = new_key()
    ed = "ab" * 32
    mac = enrolment_mac(token, "heart", silo, key.public_key(), ed)
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, silo),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "heart"),
        ]
    )
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(name)
        .add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(ED25519_URI_PREFIX + ed)]),
            critical=False,
        )
        .add_attribute(AttributeOID.CHALLENGE_PASSWORD, mac.encode())
        .sign(key, hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.PEM)


SQL_TEXT = "x'); DROP TABLE silos; -- \" ; DELETE FROM federations WHERE '1'='1"


def test_sql_significant_characters_are_stored_verbatim(
    db_url: str, fed: Path, tmp_path: Path
) -> None:
    """On SQLite and PostgreSQL: names with '-', '_', '.', descriptions and query parameters
    full of SQL come back exactly as sent and match nothing they should not."""
    with production_service(tmp_path / "svc", db_url, fed) as url:
        coord = coordinator(url, fed)
        coord.create_federation("a--b_c.d", SQL_TEXT)
        coord.create_federation("heart")
        listed = {
            f["name"]: f["description"] for f in coord.request("GET", "/v1/federations").json()
        }
        assert listed == {"a--b_c.d": SQL_TEXT, "heart": ""}
        names = ["s_1", "s-1", "s.1", "s--1"]
        for name in names:
            files = silo_files(fed, tmp_path / "silos", name, replace=True)
            silo_client(url, files, name).enrol()
        assert sorted(s.name for s in coord.silos("heart")) == sorted(names)
        # '_' is a LIKE wildcard: it matches nothing; an injection is not even a name (422)
        assert coord.ledger(run_id="s_") == []
        for probe in ("' OR '1'='1", "%"):
            with pytest.raises(ServiceRejected) as err:
                coord.ledger(run_id=probe)
            assert err.value.status == 422 and "run_id" in str(err.value)
        with pytest.raises(ServiceRejected) as err:
            coord.request("GET", "/v1/runs?federation=%27%20OR%201%3D1--")
        assert err.value.status == 422 and "federation" in str(err.value)
        with pytest.raises(ServiceRejected) as err:
            coord.approve("heart", "s_%")
        assert err.value.status == 422  # not a silo name: refused before any lookup
        assert json.dumps(SQL_TEXT) in coord.request("GET", "/v1/federations").text
