"""A live development service with one federation, two approved silos and a started run whose
round 1 is open: the target the attack tests aim at. Imported by tests, not a fixture module."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import unquote, urlsplit

import numpy as np
import requests
from support.api_federation import SHAPES, SPEC, WIRE
from support.live_service import coordinator, enrolled_silo, service_in_thread
from support.validation import validate_all

from flows.service_client import CoordinatorClient
from schemas import signing, tensors
from schemas.wire import RoundOpen, RunCreate
from silos.client import SiloClient

ADMIN_TOKEN = "test-admin-token"


@dataclass
class Target:
    url: str
    coord: CoordinatorClient
    silos: dict[str, SiloClient]
    run_id: str


def update(run_id: str, round_: int, seed: int = 0, **meta: str) -> bytes:
    """A well-formed tensor update for `SPEC`'s model, with metadata `meta` on top."""
    rng = np.random.default_rng(seed)
    arrays = {n: rng.normal(size=s).astype(np.float32) for n, s in SHAPES}
    md = {"run_id": run_id, "round": str(round_), "n_examples": "10", **meta}
    return tensors.encode(arrays, md)


@contextmanager
def live_target(workspace: Path, database_url: str, **settings: object) -> Iterator[Target]:
    """A live service (`settings`: further `ServiceSettings` fields) with federation "f", silos
    a and b approved and validated, and a run whose round 1 is open."""
    with service_in_thread(workspace, database_url, **settings) as url:
        coord = coordinator(url, ADMIN_TOKEN)
        coord.create_federation("f")
        silos = {n: enrolled_silo(url, coord, "f", n) for n in ("a", "b")}
        run = coord.create_run(RunCreate(spec=SPEC))
        coord.put_initial_model(run.run_id, update(run.run_id, 0, seed=99))
        coord.start_run(run.run_id)
        coord.open_round(run.run_id, RoundOpen(round=1, deadline_s=600))
        validate_all(silos, run.run_id)  # the gate's signed row counts bound n_examples
        yield Target(url, coord, silos, run.run_id)


class SiloSignature(requests.auth.AuthBase):
    """Signs each outgoing request as `silos.client.SiloClient._headers` does: over the method,
    the path the service sees (percent-decoded) with its raw query, and the body bytes."""

    def __init__(self, client: SiloClient) -> None:
        self.client = client

    def __call__(self, r: requests.PreparedRequest) -> requests.PreparedRequest:
        parts = urlsplit(r.url or "")
        path = unquote(parts.path) + (f"?{parts.query}" if parts.query else "")
        body = r.body if isinstance(r.body, bytes) else (r.body or "").encode()
        timestamp = datetime.now(UTC).isoformat()
        nonce = secrets.token_hex(16)
        c = self.client
        message = signing.request_message(
            r.method or "GET", path, body, timestamp, nonce, c.federation, c.silo
        )
        r.headers.update(
            {
                **WIRE,
                signing.HEADER_FEDERATION: c.federation,
                signing.HEADER_SILO: c.silo,
                signing.HEADER_TIMESTAMP: timestamp,
                signing.HEADER_NONCE: nonce,
                signing.HEADER_SIGNATURE: c.key.sign(message).hex(),
            }
        )
        return r
