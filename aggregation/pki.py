"""The federation's small certificate authority: CA, leaf certificates, silo CSRs, identities.

One CA per federation signs three kinds of certificate, told apart by the subject's
organizational unit (OU) so that no name can be confused across roles:

- ``service``: the aggregation service's server certificate (subjectAltName = the addresses
  silos dial);
- ``coordinator``: the coordinator's client certificate, for the admin endpoints;
- ``silo``: one client certificate per silo, CN = silo name, O = federation name, and the
  silo's Ed25519 identity key as the URI ``urn:fedsilo:ed25519:<hex>`` in subjectAltName, so
  the certificate and the key that signs every request name the same silo.

A silo builds its own key pair and a CSR; the coordinator signs it after checking the CSR's
enrolment MAC: HMAC-SHA256 under the federation's enrolment token over (federation, silo,
TLS public key, Ed25519 key), carried in the PKCS#10 challengePassword attribute. The token
never travels with the CSR, yet a CSR altered in transit (a swapped key or name) or made by
someone who was never given the token is refused. ECDSA P-256 keys, SHA-256 signatures.
"""

from __future__ import annotations

import datetime
import hashlib
import hmac
import ipaddress
import os
import re
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import AttributeOID, ExtendedKeyUsageOID, NameOID

Key = ec.EllipticCurvePrivateKey
ROLE_SERVICE = "service"
ROLE_COORDINATOR = "coordinator"
ROLE_SILO = "silo"
ED25519_URI_PREFIX = "urn:fedsilo:ed25519:"
# The same rule as schemas.wire.NAME_PATTERN: names become file names, so no '/', no leading '.'.
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$")


class PkiError(ValueError):
    """A certificate, key or CSR that cannot be used; the message says which and why."""


@dataclass(frozen=True)
class Issued:
    """A private key and the certificate issued for it."""

    key: Key
    cert: x509.Certificate

    def write(self, cert_path: Path, key_path: Path) -> None:
        """Write the certificate (PEM) and the key (PEM, mode 0600)."""
        write_cert(cert_path, self.cert)
        write_private_key(key_path, self.key)


@dataclass(frozen=True)
class PeerIdentity:
    """Who a verified certificate names."""

    role: str
    name: str
    federation: str
    ed25519: str | None
    fingerprint: str


def check_name(name: str, what: str) -> str:
    """Refuse names that are unsafe as file names (path traversal) or over 64 characters."""
    if not _NAME.match(name):
        raise PkiError(
            f"{what} {name!r} is not allowed: use 1-64 letters, digits, '_', '.' or '-', "
            "starting with a letter or digit"
        )
    return name


def write_private_key(path: Path, key: Key) -> None:
    """Write an unencrypted PKCS#8 PEM key readable by its owner only."""
    data = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    os.chmod(path, 0o600)  # O_CREAT's mode does not apply to a file that already existed


def write_cert(path: Path, cert: x509.Certificate) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def load_cert(path: Path) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(path.read_bytes())
    except FileNotFoundError as exc:
        raise PkiError(f"certificate file {path} does not exist") from exc
    except ValueError as exc:
        raise PkiError(f"{path} does not hold a PEM certificate: {exc}") from exc


def load_key(path: Path) -> Key:
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except FileNotFoundError as exc:
        raise PkiError(f"key file {path} does not exist") from exc
    except (ValueError, TypeError) as exc:
        raise PkiError(f"{path} does not hold an unencrypted PEM private key: {exc}") from exc
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise PkiError(f"{path} holds a {type(key).__name__}, not an EC private key")
    return key


def new_key() -> Key:
    return ec.generate_private_key(ec.SECP256R1())


def fingerprint(cert: x509.Certificate) -> str:
    return cert.fingerprint(hashes.SHA256()).hex()


def _name(common_name: str, organization: str = "", unit: str = "") -> x509.Name:
    attrs = [x509.NameAttribute(NameOID.COMMON_NAME, common_name)]
    if organization:
        attrs.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization))
    if unit:
        attrs.append(x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, unit))
    return x509.Name(attrs)


def _builder(
    subject: x509.Name,
    issuer: x509.Name,
    public_key: ec.EllipticCurvePublicKey,
    days: int,
    not_after: datetime.datetime | None = None,
) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.UTC)
    start = now - datetime.timedelta(minutes=5)  # tolerate small clock skew
    end = not_after or now + datetime.timedelta(days=days)
    if end <= start:  # an already-expired certificate (tests): keep not_before < not_after
        start = end - datetime.timedelta(days=1)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
    )


def issue_ca(common_name: str, days: int = 365) -> Issued:
    """A self-signed CA that may sign leaf certificates only (path length 0)."""
    key = new_key()
    usage = x509.KeyUsage(
        digital_signature=True,
        key_cert_sign=True,
        crl_sign=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        encipher_only=False,
        decipher_only=False,
    )
    cert = (
        _builder(_name(common_name), _name(common_name), key.public_key(), days)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(usage, critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return Issued(key, cert)


def issue_leaf(
    ca: Issued,
    common_name: str,
    *,
    server_hosts: list[str],
    days: int = 30,
    organization: str = "",
    unit: str = "",
    uris: tuple[str, ...] = (),
    public_key: ec.EllipticCurvePublicKey | None = None,
    not_after: datetime.datetime | None = None,
) -> Issued:
    """A certificate signed by `ca`: a server certificate when `server_hosts` is non-empty
    (each host goes into subjectAltName as an IP address or DNS name), else a client one.

    With `public_key` the certificate is issued for that key (a CSR's) and the returned
    `Issued.key` is a throwaway that must not be used; `issue_for_key` hides that detail.
    """
    key = new_key()
    subject_key = public_key or key.public_key()
    purpose = ExtendedKeyUsageOID.SERVER_AUTH if server_hosts else ExtendedKeyUsageOID.CLIENT_AUTH
    builder = (
        _builder(
            _name(common_name, organization, unit), ca.cert.subject, subject_key, days, not_after
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([purpose]), critical=False)
    )
    names: list[x509.GeneralName] = [_general_name(h) for h in server_hosts]
    names += [x509.UniformResourceIdentifier(u) for u in uris]
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    return Issued(key, builder.sign(ca.key, hashes.SHA256()))


def _general_name(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


# --- silo enrolment: CSR with an enrolment MAC --------------------------------------------------


def enrolment_mac(
    token: str, federation: str, silo: str, tls_public_key: ec.EllipticCurvePublicKey, ed25519: str
) -> str:
    """HMAC-SHA256 (hex) under the enrolment token over what the coordinator will certify."""
    spki = tls_public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    message = "\n".join(
        ["fedsilo-csr-v1", federation, silo, hashlib.sha256(spki).hexdigest(), ed25519]
    ).encode()
    return hmac.new(token.encode(), message, hashlib.sha256).hexdigest()


def make_silo_csr(
    key: Key, *, federation: str, silo: str, ed25519_hex: str, token: str
) -> x509.CertificateSigningRequest:
    """The silo's certificate request: its names, its Ed25519 key and the enrolment MAC."""
    check_name(federation, "federation name")
    check_name(silo, "silo name")
    mac = enrolment_mac(token, federation, silo, key.public_key(), ed25519_hex)
    return (
        x509.CertificateSigningRequestBuilder()
        .subject_name(_name(silo, federation, ROLE_SILO))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.UniformResourceIdentifier(ED25519_URI_PREFIX + ed25519_hex)]
            ),
            critical=False,
        )
        .add_attribute(AttributeOID.CHALLENGE_PASSWORD, mac.encode())
        .sign(key, hashes.SHA256())
    )


@dataclass(frozen=True)
class SiloRequest:
    """What a verified CSR asks the coordinator to certify."""

    federation: str
    silo: str
    ed25519: str
    public_key: ec.EllipticCurvePublicKey


def read_silo_csr(
    csr_pem: bytes, *, federation: str, token: str, source: str = "CSR"
) -> SiloRequest:
    """Parse and check a silo's CSR: its self-signature, names, Ed25519 key and enrolment MAC."""
    try:
        csr = x509.load_pem_x509_csr(csr_pem)
    except ValueError as exc:
        raise PkiError(f"{source} is not a PEM certificate signing request: {exc}") from exc
    if not csr.is_signature_valid:
        raise PkiError(f"{source}: its signature does not match its public key")
    public_key = csr.public_key()
    if not isinstance(public_key, ec.EllipticCurvePublicKey):
        raise PkiError(f"{source}: the key must be an EC key (P-256)")
    silo = _one(csr.subject, NameOID.COMMON_NAME, source)
    check_name(silo, f"{source}: silo name")
    fed = _one(csr.subject, NameOID.ORGANIZATION_NAME, source)
    if fed != federation:
        raise PkiError(f"{source} is for federation {fed!r}, not {federation!r}")
    ed25519 = _ed25519_of(csr.extensions, source)
    if ed25519 is None:
        raise PkiError(f"{source} does not carry the silo's Ed25519 key ({ED25519_URI_PREFIX}…)")
    try:
        raw = csr.attributes.get_attribute_for_oid(AttributeOID.CHALLENGE_PASSWORD).value
    except x509.AttributeNotFound as exc:
        raise PkiError(
            f"{source} carries no enrolment MAC; create it with `fedsilo silo enrol --token-file`"
        ) from exc
    mac = raw.decode() if isinstance(raw, bytes) else str(raw)
    expected = enrolment_mac(token, federation, silo, public_key, ed25519)
    if not hmac.compare_digest(mac, expected):
        raise PkiError(
            f"{source} for silo {silo!r}: the enrolment MAC does not match this federation's "
            "token (wrong token, or the request was altered on its way)"
        )
    return SiloRequest(federation=fed, silo=silo, ed25519=ed25519, public_key=public_key)


def issue_silo_cert(
    ca: Issued, req: SiloRequest, days: int = 365, not_after: datetime.datetime | None = None
) -> x509.Certificate:
    """The silo's client certificate; the subject is rebuilt here, never copied from the CSR."""
    return issue_leaf(
        ca,
        req.silo,
        server_hosts=[],
        days=days,
        organization=req.federation,
        unit=ROLE_SILO,
        uris=(ED25519_URI_PREFIX + req.ed25519,),
        public_key=req.public_key,
        not_after=not_after,
    ).cert


def _one(name: x509.Name, oid: x509.ObjectIdentifier, source: str) -> str:
    attrs = name.get_attributes_for_oid(oid)
    if len(attrs) != 1:
        raise PkiError(f"{source}: subject must hold exactly one {oid._name}")
    value = attrs[0].value
    return value.decode() if isinstance(value, bytes) else value


def _ed25519_of(extensions: x509.Extensions, source: str) -> str | None:
    try:
        san = extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return None
    keys = [
        u.removeprefix(ED25519_URI_PREFIX)
        for u in san.get_values_for_type(x509.UniformResourceIdentifier)
        if u.startswith(ED25519_URI_PREFIX)
    ]
    if len(keys) > 1:
        raise PkiError(f"{source} names more than one Ed25519 key")
    if keys and not re.fullmatch(r"[0-9a-f]{64}", keys[0]):
        raise PkiError(f"{source}: the Ed25519 key must be 64 lowercase hex digits")
    return keys[0] if keys else None


def identity_of(cert: x509.Certificate) -> PeerIdentity:
    """The role and names a certificate (already verified against the CA) stands for."""
    subject = cert.subject
    units = subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)
    orgs = subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)
    names = subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    role = str(units[0].value) if len(units) == 1 else ""
    return PeerIdentity(
        role=role,
        name=str(names[0].value) if len(names) == 1 else "",
        federation=str(orgs[0].value) if len(orgs) == 1 else "",
        ed25519=_ed25519_of(cert.extensions, "certificate"),
        fingerprint=fingerprint(cert),
    )
