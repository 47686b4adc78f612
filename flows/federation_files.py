"""The federation's files on disk: what `fedsilo federation init`, `fedsilo silo enrol` and
`fedsilo federation sign-csr` write, and where (infra/README.md walks through them).

Coordinator's folder (``--dir FED``), each part meant for one machine::

    FED/ca/           ca.pem, ca.key, enrolment.token, federation.toml, issued/<silo>.pem
                      -> stays with the coordinator (offline if possible)
    FED/service/      service.pem, service.key, ca.pem, admin.token -> the service's machine
    FED/coordinator/  coordinator.pem, coordinator.key, ca.pem, admin.token -> the coordinator

A silo's folder (``silo enrol --dir D``): identity_ed25519.pem, silo.key, silo.csr, then
silo.pem and ca.pem once the coordinator has signed the CSR. Private keys and tokens are 0600.
"""

from __future__ import annotations

import os
import secrets
import tomllib
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from aggregation.pki import (
    ROLE_COORDINATOR,
    ROLE_SERVICE,
    Issued,
    PkiError,
    check_name,
    identity_of,
    issue_ca,
    issue_leaf,
    issue_silo_cert,
    load_cert,
    load_key,
    make_silo_csr,
    new_key,
    read_silo_csr,
    write_cert,
    write_private_key,
)

DEFAULT_HOSTS = ("127.0.0.1", "localhost")


@dataclass(frozen=True)
class SiloFiles:
    """Where one silo's identity and TLS files live."""

    identity_key: Path
    tls_key: Path
    csr: Path
    cert: Path
    ca: Path

    @classmethod
    def in_dir(cls, folder: Path) -> SiloFiles:
        return cls(
            identity_key=folder / "identity_ed25519.pem",
            tls_key=folder / "silo.key",
            csr=folder / "silo.csr",
            cert=folder / "silo.pem",
            ca=folder / "ca.pem",
        )


def write_secret(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text + "\n")


def init_federation(folder: Path, federation: str, hosts: list[str], days: int = 365) -> None:
    """Create the CA, the service's and coordinator's certificates, the enrolment and admin
    tokens. Refuses to overwrite an existing CA: every certificate it signed depends on it."""
    check_name(federation, "federation name")
    ca_dir = folder / "ca"
    if (ca_dir / "ca.key").exists():
        raise PkiError(f"{ca_dir / 'ca.key'} exists: this folder already holds a federation CA")
    ca = issue_ca(f"fedsilo federation {federation} CA", days=days)
    ca.write(ca_dir / "ca.pem", ca_dir / "ca.key")
    write_secret(ca_dir / "enrolment.token", secrets.token_urlsafe(32))
    (ca_dir / "federation.toml").write_text(f'name = "{federation}"\n')
    (ca_dir / "issued").mkdir(exist_ok=True)
    admin_token = secrets.token_urlsafe(32)
    service = issue_leaf(
        ca, "fedsilo aggregation service", server_hosts=hosts, days=days, unit=ROLE_SERVICE
    )
    coordinator = issue_leaf(
        ca,
        "coordinator",
        server_hosts=[],
        days=days,
        organization=federation,
        unit=ROLE_COORDINATOR,
    )
    for role, issued in ((ROLE_SERVICE, service), (ROLE_COORDINATOR, coordinator)):
        issued.write(folder / role / f"{role}.pem", folder / role / f"{role}.key")
        write_cert(folder / role / "ca.pem", ca.cert)
        write_secret(folder / role / "admin.token", admin_token)


def load_ca(folder: Path) -> tuple[Issued, str, str]:
    """The CA, the federation's name and its enrolment token from FED/ca/."""
    ca_dir = folder / "ca"
    meta = ca_dir / "federation.toml"
    if not meta.is_file():
        raise PkiError(f"{folder} is not a federation folder (no {meta}); see `federation init`")
    federation = str(tomllib.loads(meta.read_text())["name"])
    token = (ca_dir / "enrolment.token").read_text().strip()
    return Issued(load_key(ca_dir / "ca.key"), load_cert(ca_dir / "ca.pem")), federation, token


def identity_hex(key: Ed25519PrivateKey) -> str:
    return (
        key.public_key()
        .public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        .hex()
    )


def make_silo_request(
    files: SiloFiles, federation: str, silo: str, token: str, identity: Ed25519PrivateKey
) -> str:
    """Write the silo's TLS key (0600, kept if present) and its CSR; returns the Ed25519 key
    (hex) the CSR carries, for the operator to read to the coordinator."""
    tls_key = load_key(files.tls_key) if files.tls_key.exists() else new_key()
    if not files.tls_key.exists():
        write_private_key(files.tls_key, tls_key)
    ed25519 = identity_hex(identity)
    csr = make_silo_csr(tls_key, federation=federation, silo=silo, ed25519_hex=ed25519, token=token)
    files.csr.parent.mkdir(parents=True, exist_ok=True)
    files.csr.write_bytes(csr.public_bytes(serialization.Encoding.PEM))
    return ed25519


def sign_csr(folder: Path, csr_path: Path, out: Path, days: int, replace: bool) -> tuple[str, str]:
    """Check a silo's CSR and write its certificate to `out` (and ca.pem beside it) and to
    FED/ca/issued/<silo>.pem. Returns (silo name, Ed25519 key hex).

    A second certificate for a silo name with another Ed25519 key needs ``replace``: the
    coordinator must mean to hand that silo's name to a new key.
    """
    ca, federation, token = load_ca(folder)
    try:
        pem = csr_path.read_bytes()
    except FileNotFoundError as exc:
        raise PkiError(f"CSR file {csr_path} does not exist") from exc
    req = read_silo_csr(pem, federation=federation, token=token, source=f"CSR {csr_path}")
    record = folder / "ca" / "issued" / f"{check_name(req.silo, 'silo name')}.pem"
    if record.exists() and not replace:
        earlier = identity_of(load_cert(record)).ed25519
        if earlier != req.ed25519:
            raise PkiError(
                f"silo {req.silo!r} already has a certificate for another key "
                f"({(earlier or '?')[:16]}…); pass --replace if that silo really has a new key"
            )
    cert = issue_silo_cert(ca, req, days=days)
    write_cert(record, cert)
    write_cert(out, cert)
    write_cert(out.parent / "ca.pem", ca.cert)
    return req.silo, req.ed25519
