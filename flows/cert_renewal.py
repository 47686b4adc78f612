"""Renewing the service's TLS certificate before it expires (`fedsilo federation renew-cert`).

The federation CA issues a new certificate (new key, same names) and the pair replaces the
files the service serves; the running service notices the change (or a SIGHUP) and presents
the new certificate to new connections (aggregation/service/tls_reload.py). Silos need
nothing: they trust the CA, not one certificate.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509

from aggregation.pki import ROLE_SERVICE, PkiError, issue_leaf, load_cert
from flows.federation_files import load_ca


@dataclass(frozen=True)
class Renewal:
    renewed: bool
    serial: int
    not_after: datetime.datetime
    cert_path: Path


def _hosts(cert: x509.Certificate) -> list[str]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    ips = [str(ip) for ip in san.get_values_for_type(x509.IPAddress)]
    return [*san.get_values_for_type(x509.DNSName), *ips]


def renew_service_cert(
    folder: Path,
    *,
    days: int = 365,
    cert_path: Path | None = None,
    key_path: Path | None = None,
    within_days: int | None = None,
) -> Renewal:
    """Issue the service a new certificate for the names its current one has.

    Parameters
    ----------
    folder
        The federation folder (`federation init`): its CA signs the new certificate.
    cert_path, key_path
        The files the service serves (default FOLDER/service/service.pem and .key); both are
        replaced atomically, the key first (the service refuses a mismatched pair until the
        certificate follows).
    within_days
        Renew only when the current certificate expires within this many days (for a timer).

    Raises
    ------
    PkiError
        No CA in `folder`, or no current certificate to take the names from.
    """
    cert_path = cert_path or folder / ROLE_SERVICE / "service.pem"
    key_path = key_path or cert_path.with_suffix(".key")
    if not cert_path.is_file():
        raise PkiError(f"no service certificate at {cert_path}: give --cert (the file it serves)")
    current = load_cert(cert_path)
    left = current.not_valid_after_utc - datetime.datetime.now(datetime.UTC)
    if within_days is not None and left > datetime.timedelta(days=within_days):
        return Renewal(False, current.serial_number, current.not_valid_after_utc, cert_path)
    ca, _federation, _token = load_ca(folder)
    hosts = _hosts(current)
    if not hosts:
        raise PkiError(f"{cert_path} names no host (subjectAltName): not a service certificate")
    issued = issue_leaf(
        ca, "fedsilo aggregation service", server_hosts=hosts, days=days, unit=ROLE_SERVICE
    )
    tmp_cert = cert_path.with_name(cert_path.name + ".new")
    tmp_key = key_path.with_name(key_path.name + ".new")
    issued.write(tmp_cert, tmp_key)
    os.replace(tmp_key, key_path)
    os.replace(tmp_cert, cert_path)
    return Renewal(True, issued.cert.serial_number, issued.cert.not_valid_after_utc, cert_path)
