"""The client half of mutual TLS: the federation CA to trust and this party's certificate.

Silo agents take the files from silo.toml's ``[tls]`` section; the coordinator's commands and
flows from ``FEDSILO_TLS_CA``, ``FEDSILO_TLS_CERT`` and ``FEDSILO_TLS_KEY`` (so a Prefect
worker or a shell needs no extra flags).
"""

from __future__ import annotations

import os
import ssl
from dataclasses import dataclass
from pathlib import Path

import httpx

ENV_CA = "FEDSILO_TLS_CA"
ENV_CERT = "FEDSILO_TLS_CERT"
ENV_KEY = "FEDSILO_TLS_KEY"
PLAIN_HTTP_HINT = (
    "a service in production mode speaks only HTTPS with client certificates: use an "
    "https:// address and give the federation's CA and this party's certificate and key "
    f"(silo.toml [tls], or {ENV_CA}/{ENV_CERT}/{ENV_KEY})"
)


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


REFUSED_CERT_HINT = (
    "the service closed the TLS connection: in production it refuses client certificates "
    "that are not signed by the federation's CA or have expired"
)


def tls_hint(base_url: str, exc: Exception) -> str:
    """A likely cause, for a connection the service dropped without answering."""
    if not isinstance(exc, httpx.RemoteProtocolError | httpx.ReadError):
        return ""
    hint = PLAIN_HTTP_HINT if base_url.startswith("http://") else REFUSED_CERT_HINT
    # the same errors come from a service that stopped mid-request: say it is only a guess
    return f" (if the service is running: {hint})"
