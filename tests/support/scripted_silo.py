"""A silo agent's real flow (`silos.agent.silo_training`) against a scripted service: the
silo's own `SiloClient` over `httpx.MockTransport` (a fake at the process edge) and a stub
table in place of the validation gate."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import httpx
import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from silos import agent
from silos.client import SiloClient
from support.silo_contracts import accept_shipped


def silo_config(tmp_path: Path) -> Path:
    """silo.toml of silo ``a`` in federation ``f``, its shipped contract accepted."""
    cfg = tmp_path / "silo.toml"
    cfg.write_text(
        '[silo]\nname = "a"\nfederation = "f"\n[data]\npath = "d.csv"\n'
        'contract = "heart_disease"\n[service]\nurls = ["http://service.test"]\n'
        '[policy]\nallowed_models = ["logreg"]\n'
    )
    accept_shipped(cfg)  # the operator accepted the contract the run uses
    return cfg


def scripted_agent(
    monkeypatch: pytest.MonkeyPatch,
    key: Ed25519PrivateKey,
    handler: Callable[[httpx.Request], httpx.Response],
) -> None:
    """Point the agent at `handler` as its service, and give it a stub table (no gate)."""
    client = SiloClient(
        "http://service.test",
        federation="f",
        silo="a",
        key=key,
        retry_for_s=1,
        transport=httpx.MockTransport(handler),
    )
    monkeypatch.setattr(agent, "make_client", lambda config, retry_for_s=600.0: client)
    table = SimpleNamespace(
        y_train=np.zeros(10), n_train=10, data_sha256="x", stats=None, dask=None
    )
    monkeypatch.setattr(agent, "_ready_data", lambda *args: table)
