"""The silo agent's signed client, built from silo.toml (its key, its service URLs, its TLS
files): one place for the agent, its flows (horizontal and vertical) and one-shot commands."""

from __future__ import annotations

from silos.client import SiloClient
from silos.config import SiloConfig
from silos.keys import load_silo_key
from silos.tls_client import TlsFiles


def make_client(config: SiloConfig, retry_for_s: float | None = None) -> SiloClient:
    """The silo's signed client; it retries the service forever unless `retry_for_s` bounds it
    (tests and one-shot commands)."""
    key = load_silo_key(config.key_path, config.workspace)
    return SiloClient(
        config.service.urls,
        federation=config.silo.federation,
        silo=config.silo.name,
        key=key,
        retry_for_s=retry_for_s,
        tls=TlsFiles(config.tls.ca, config.tls.cert, config.tls.key) if config.tls else None,
    )
