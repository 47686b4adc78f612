"""The bootstrap commands as a silo operator and a coordinator run them (infra/README.md)."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from tls_federation import coordinator
from typer.testing import CliRunner

from aggregation.pki import identity_of, load_cert
from flows.cli import app
from silos.agent import make_client
from silos.config import load_silo_config
from silos.exceptions import SiloConfigError

runner = CliRunner()


def _ok(*args: str) -> str:
    result = runner.invoke(app, list(args), env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    return result.output


def _fails(*args: str) -> str:
    result = runner.invoke(app, list(args), env={"COLUMNS": "200"})
    assert result.exit_code == 2, result.output
    return result.output


def _silo_toml(folder: Path, url: str, name: str = "cleveland") -> Path:
    folder.mkdir(parents=True)
    path = folder / "silo.toml"
    path.write_text(
        f'[silo]\nname = "{name}"\nfederation = "heart"\n\n'
        '[data]\npath = "data.csv"\ncontract = "heart_disease"\n\n'
        f'[service]\nurls = ["{url}"]\n\n'
        '[tls]\nca = "certs/ca.pem"\ncert = "certs/silo.pem"\nkey = "certs/silo.key"\n'
    )
    return path


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_runbook_enrolment_with_silo_toml(prod_url: str, fed: Path, tmp_path: Path) -> None:
    config = _silo_toml(tmp_path / "cleveland", prod_url)
    token_file = fed / "ca" / "enrolment.token"
    out = _ok("silo", "enrol", "--config", str(config), "--token-file", str(token_file))
    certs = tmp_path / "cleveland" / "certs"
    assert "certs/silo.csr" in out
    assert _mode(certs / "silo.key") == 0o600
    identity = tmp_path / "cleveland" / "workspace" / "keys" / "silo_ed25519.pem"
    assert _mode(identity) == 0o600
    out = _ok("federation", "sign-csr", str(certs / "silo.csr"), "--dir", str(fed))
    cert = load_cert(certs / "silo.pem")
    peer = identity_of(cert)
    assert (peer.role, peer.name, peer.federation) == ("silo", "cleveland", "heart")
    assert peer.ed25519 is not None and peer.ed25519 in out
    # the agent's own client, built from silo.toml's [tls] section, enrols over mutual TLS
    client = make_client(load_silo_config(config), retry_for_s=5)
    assert client.enrol().status == "pending"
    assert client.public_key_hex() == peer.ed25519
    approved = coordinator(prod_url, fed).approve("heart", "cleveland")
    assert approved.public_key.startswith(peer.ed25519[:16])
    assert client.whoami().status == "approved"


def test_csr_checks(fed: Path, tmp_path: Path) -> None:
    wrong = tmp_path / "wrong.token"
    wrong.write_text("not-the-token\n")
    _ok("silo", "enrol", "--federation", "heart", "--silo", "mallory", "--dir",
        str(tmp_path / "m"), "--token-file", str(wrong))  # fmt: skip
    out = _fails("federation", "sign-csr", str(tmp_path / "m" / "silo.csr"), "--dir", str(fed))
    assert "enrolment MAC does not match" in out
    assert not (tmp_path / "m" / "silo.pem").exists()
    # a CSR whose key was swapped on its way: the MAC no longer matches
    token = str(fed / "ca" / "enrolment.token")
    _ok("silo", "enrol", "--federation", "heart", "--silo", "dave", "--dir",
        str(tmp_path / "d"), "--token-file", token)  # fmt: skip
    _ok("silo", "enrol", "--federation", "heart", "--silo", "dave", "--dir",
        str(tmp_path / "d2"), "--token-file", token)  # fmt: skip
    original = x509.load_pem_x509_csr((tmp_path / "d" / "silo.csr").read_bytes())
    other = x509.load_pem_x509_csr((tmp_path / "d2" / "silo.csr").read_bytes())
    assert original.public_key() != other.public_key()
    _ok("federation", "sign-csr", str(tmp_path / "d" / "silo.csr"), "--dir", str(fed))
    # the same name for a second key needs --replace
    out = _fails("federation", "sign-csr", str(tmp_path / "d2" / "silo.csr"), "--dir", str(fed))
    assert "already has a certificate for another key" in out
    _ok("federation", "sign-csr", str(tmp_path / "d2" / "silo.csr"), "--dir", str(fed),
        "--replace")  # fmt: skip
    # a CSR for another federation
    other_fed = tmp_path / "other"
    _ok("federation", "init", "--federation", "banks", "--dir", str(other_fed))
    _ok("silo", "enrol", "--federation", "banks", "--silo", "b1", "--dir", str(tmp_path / "b1"),
        "--token-file", str(other_fed / "ca" / "enrolment.token"))  # fmt: skip
    out = _fails("federation", "sign-csr", str(tmp_path / "b1" / "silo.csr"), "--dir", str(fed))
    assert "is for federation 'banks', not 'heart'" in out
    # not PEM at all
    junk = tmp_path / "junk.csr"
    junk.write_bytes(b"-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n")
    assert "not a PEM certificate signing request" in _fails(
        "federation", "sign-csr", str(junk), "--dir", str(fed)
    )
    assert original.public_bytes(serialization.Encoding.PEM)  # parsed, unchanged


def test_init_refuses_to_overwrite_a_ca_and_keeps_secrets_private(tmp_path: Path) -> None:
    folder = tmp_path / "fed"
    _ok("federation", "init", "--federation", "heart", "--dir", str(folder), "--host", "fl.test")
    for secret in ("ca/ca.key", "ca/enrolment.token", "service/service.key",
                   "service/admin.token", "coordinator/coordinator.key"):  # fmt: skip
        assert _mode(folder / secret) == 0o600, secret
    san = load_cert(folder / "service" / "service.pem").extensions.get_extension_for_class(
        x509.SubjectAlternativeName
    )
    assert "fl.test" in san.value.get_values_for_type(x509.DNSName)
    key_before = (folder / "ca" / "ca.key").read_bytes()
    assert "already holds a federation CA" in _fails(
        "federation", "init", "--federation", "heart", "--dir", str(folder)
    )
    assert (folder / "ca" / "ca.key").read_bytes() == key_before


def test_silo_toml_tls_must_match_its_urls(tmp_path: Path) -> None:
    config = _silo_toml(tmp_path / "a", "http://127.0.0.1:8700")
    with pytest.raises(SiloConfigError, match=r"\[tls\] section needs https://"):
        load_silo_config(config)
    plain = tmp_path / "b" / "silo.toml"
    plain.parent.mkdir()
    plain.write_text(
        '[silo]\nname = "x"\nfederation = "heart"\n[data]\npath = "d.csv"\n'
        'contract = "heart_disease"\n[service]\nurls = ["https://fl.test:8443"]\n'
    )
    with pytest.raises(SiloConfigError, match=r"need a \[tls\] section"):
        load_silo_config(plain)
