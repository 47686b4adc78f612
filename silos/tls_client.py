"""The client half of mutual TLS: the federation CA to trust and this party's certificate.

Silo agents take the files from silo.toml's ``[tls]`` section; the coordinator's commands and
flows from ``FEDSILO_TLS_CA``, ``FEDSILO_TLS_CERT`` and ``FEDSILO_TLS_KEY`` (so a Prefect
worker or a shell needs no extra flags).

A long-running client (the silo agent) picks up renewed files without a restart: `reload`
loads them into its live context once `stamp` says they changed on disk, and `expiry_note`
says when the certificate expires soon or has expired.
"""

from __future__ import annotations

import datetime
import logging
import os
import ssl
import tempfile
from dataclasses import dataclass
from pathlib import Path

import httpx
from cryptography import x509

ENV_CA = "FEDSILO_TLS_CA"
ENV_CERT = "FEDSILO_TLS_CERT"
ENV_KEY = "FEDSILO_TLS_KEY"
PLAIN_HTTP_HINT = (
    "a service in production mode speaks only HTTPS with client certificates: use an "
    "https:// address and give the federation's CA and this party's certificate and key "
    f"(silo.toml [tls], or {ENV_CA}/{ENV_CERT}/{ENV_KEY})"
)


EXPIRY_WARNING_DAYS = 14
"""A certificate expiring within this many days is logged (WARNING) at start and daily."""

Stamp = tuple[tuple[int, int, int], ...]


class TlsConfigError(ValueError):
    """TLS files that are missing or unusable; the message names the file."""


@dataclass(frozen=True)
class TlsFiles:
    ca: Path
    cert: Path
    key: Path

    @classmethod
    def from_env(cls) -> TlsFiles | None:
        """From FEDSILO_TLS_*; None when none is set, an error when only some are."""
        values = {name: os.environ.get(name, "") for name in (ENV_CA, ENV_CERT, ENV_KEY)}
        if not any(values.values()):
            return None
        missing = [name for name, value in values.items() if not value]
        if missing:
            raise TlsConfigError(
                f"mutual TLS needs {ENV_CA}, {ENV_CERT} and {ENV_KEY}; {missing} unset"
            )
        return cls(Path(values[ENV_CA]), Path(values[ENV_CERT]), Path(values[ENV_KEY]))

    def context(self) -> ssl.SSLContext:
        """A client context that trusts only the federation CA and presents our certificate."""
        for what, path in (
            ("CA certificate", self.ca),
            ("certificate", self.cert),
            ("key", self.key),
        ):
            if not path.is_file():
                raise TlsConfigError(f"TLS {what} file {path} does not exist")
        try:
            ctx = ssl.create_default_context(cafile=str(self.ca))
            ctx.minimum_version = ssl.TLSVersion.TLSv1_2
            ctx.load_cert_chain(str(self.cert), str(self.key))
        except ssl.SSLError as exc:
            raise TlsConfigError(
                f"cannot use TLS files ca={self.ca} cert={self.cert} key={self.key}: {exc}"
            ) from exc
        return ctx

    def stamp(self) -> Stamp:
        """(inode, size, mtime) of each file: a cheap way to see a renewal on disk."""
        out = []
        for path in (self.ca, self.cert, self.key):
            try:
                st = path.stat()
                out.append((st.st_ino, st.st_size, st.st_mtime_ns))
            except OSError:
                out.append((0, 0, 0))
        return tuple(out)

    def reload(self, ctx: ssl.SSLContext) -> None:
        """Load the files into the live `ctx`: new connections present the new certificate.

        Each file is read once into a private folder and the set is checked in a scratch
        context first, so a half-written renewal (new certificate, old key) leaves `ctx` as
        it was. The CA is added: certificates the old one signed still verify.

        Raises
        ------
        TlsConfigError
            The files are missing or do not form a usable set (the message names them).
        """
        with tempfile.TemporaryDirectory(prefix="fedsilo-tls-") as tmp:  # 0700
            try:
                copies = TlsFiles(*(Path(tmp) / name for name in ("ca.pem", "c.pem", "k.pem")))
                for path, copy in zip(
                    (self.ca, self.cert, self.key),
                    (copies.ca, copies.cert, copies.key),
                    strict=True,
                ):
                    copy.write_bytes(path.read_bytes())
            except OSError as exc:
                raise TlsConfigError(
                    f"cannot read TLS file {exc.filename}: {exc.strerror}"
                ) from exc
            try:
                copies.context()
            except TlsConfigError as exc:  # name the real files, not the copies
                raise TlsConfigError(
                    f"cannot use TLS files ca={self.ca} cert={self.cert} key={self.key}: "
                    f"{exc.__cause__ or exc}"
                ) from exc
            ctx.load_cert_chain(str(copies.cert), str(copies.key))
            ctx.load_verify_locations(cafile=str(copies.ca))

    def not_after(self) -> datetime.datetime | None:
        """When the certificate expires (UTC); None when it cannot be read."""
        try:
            return x509.load_pem_x509_certificate(self.cert.read_bytes()).not_valid_after_utc
        except (OSError, ValueError):
            return None


def expiry_note(tls: TlsFiles, now: datetime.datetime | None = None) -> tuple[int, str] | None:
    """(log level, message) when `tls`'s certificate has expired (ERROR) or expires within
    `EXPIRY_WARNING_DAYS` (WARNING); None while it has longer, or cannot be read."""
    end = tls.not_after()
    if end is None:
        return None
    now = now or datetime.datetime.now(datetime.UTC)
    renew = (
        "renew it (infra/README.md, Certificate renewal) and put the new file in place: "
        "it is used without a restart"
    )
    if end <= now:
        return logging.ERROR, (
            f"TLS certificate {tls.cert} expired on {end:%Y-%m-%d %H:%M} UTC: the service "
            f"refuses client certificates that have expired; {renew}"
        )
    left = end - now
    if left <= datetime.timedelta(days=EXPIRY_WARNING_DAYS):
        return logging.WARNING, (
            f"TLS certificate {tls.cert} expires on {end:%Y-%m-%d %H:%M} UTC (in "
            f"{left.days} days {left.seconds // 3600} hours); {renew}"
        )
    return None


REFUSED_CERT_HINT = (
    "the service closed the TLS connection: in production it refuses client certificates "
    "that are not signed by the federation's CA or have expired"
)


def tls_hint(base_url: str, exc: Exception, tls: TlsFiles | None = None) -> str:
    """A likely cause, for a connection the service dropped without answering: our own
    certificate when it has expired, else a guess."""
    if not isinstance(exc, httpx.RemoteProtocolError | httpx.ReadError):
        return ""
    note = expiry_note(tls) if tls is not None else None
    if note is not None and note[0] == logging.ERROR:
        return f" ({note[1]})"
    hint = PLAIN_HTTP_HINT if base_url.startswith("http://") else REFUSED_CERT_HINT
    # the same errors come from a service that stopped mid-request: say it is only a guess
    return f" (if the service is running: {hint})"
