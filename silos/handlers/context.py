"""What every task handler receives besides its task: the silo's client, config and data."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from silos.client import SiloClient
from silos.config import SiloConfig
from silos.local_data import LocalData


@dataclass(frozen=True)
class SiloContext:
    """One silo's means for one task: its signed client, its config and its prepared data.

    `data` is the silo's table after the round's validation gate passed (features encoded,
    split into training and holdout rows); handlers read it and never write to it.
    """

    client: SiloClient
    config: SiloConfig
    data: LocalData

    @property
    def workspace(self) -> Path:
        """The silo's workspace folder (keys, secure-aggregation state, lineage copy)."""
        return self.config.workspace

    @property
    def key(self) -> Ed25519PrivateKey:
        """The silo's Ed25519 identity key (signs requests, statements and protocol messages)."""
        return self.client.key

    @property
    def silo(self) -> str:
        return self.client.silo
