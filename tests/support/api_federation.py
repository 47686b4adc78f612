"""A small federation (silos a, b, c; one run with round 1 open) in a live aggregation service,
for tests that drive the service's HTTP API by hand (tests/aggregation/test_service_api*.py).

Each test gets a federation of its own name, so many tests can share one service: they see only
their own federation's silos, runs and rounds.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from flows.service_client import CoordinatorClient
from schemas import tensors
from schemas.specs import ModelSpec, RunSpec, SecureAggregationSpec, param_shapes
from schemas.wire import WIRE_HEADER, WIRE_VERSION, RoundOpen, RunCreate
from silos.client import SiloClient
from support.live_service import coordinator, enrolled_silo
from support.validation import validate_all

MODEL = ModelSpec(kind="logreg", n_features=3)
SPEC = RunSpec(
    federation="f",
    dataset="toy",
    model=MODEL,
    rounds=3,
    min_silos=2,
    secure_aggregation=SecureAggregationSpec(enabled=False),
)
SHAPES = param_shapes(MODEL)
NAMES = [n for n, _ in SHAPES]
WIRE = {WIRE_HEADER: str(WIRE_VERSION)}  # raw requests speak the wire version too
MAX_BODY_BYTES = 64 * 1024  # the services these tests start refuse bigger bodies (413)


def payload(arrays: list[np.ndarray], run_id: str, round_: int, n: int = 10, **meta: str) -> bytes:
    md = {"run_id": run_id, "round": str(round_), "n_examples": str(n), **meta}
    return tensors.encode(dict(zip(NAMES, arrays, strict=True)), md)


def deltas(seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.normal(size=s).astype(np.float32) for _, s in SHAPES]


@dataclass
class Fed:
    url: str
    coord: CoordinatorClient
    silos: dict[str, SiloClient]
    run_id: str
    initial: list[np.ndarray]
    federation: str


def started_run(
    url: str, names: Iterable[str], spec: RunSpec
) -> tuple[CoordinatorClient, dict[str, SiloClient], str]:
    """In the service at `url`: federation `spec.federation` with the silos `names` approved,
    and a run of `spec` started from a model of zeros (no round open yet)."""
    coord = coordinator(url)
    coord.create_federation(spec.federation)
    silos = {n: enrolled_silo(url, coord, spec.federation, n) for n in names}
    run = coord.create_run(RunCreate(spec=spec))
    assert spec.model is not None
    zeros = {n: np.zeros(s, np.float32) for n, s in param_shapes(spec.model)}
    coord.put_initial_model(run.run_id, tensors.encode(zeros))
    coord.start_run(run.run_id)
    return coord, silos, run.run_id


def aggregated_round(url: str, rounds: int = 1) -> tuple[str, dict[str, SiloClient]]:
    """A run of `rounds` rounds in federation "f" whose round 1 aggregated the updates of silos
    a and b (0.1 and 0.2 in every weight) after their signed validation; returns its id and
    the silos' clients."""
    spec = SPEC.model_copy(update={"rounds": rounds})
    coord, silos, run_id = started_run(url, ("a", "b"), spec)
    coord.open_round(run_id, RoundOpen(round=1, deadline_s=30))
    validate_all(silos, run_id)
    for i, client in enumerate(silos.values()):
        delta = [np.full(s, 0.1 * (i + 1), np.float32) for _, s in SHAPES]
        client.submit_update(run_id, 1, payload(delta, run_id, 1))
    coord.close_round(run_id, 1)
    return run_id, silos


def new_federation(url: str, federation: str = "") -> Fed:
    """A federation (a fresh name unless given) in the service at `url`: silos a, b, c
    approved, a run whose round 1 is open, and every silo's signed validation for it."""
    federation = federation or f"f-{uuid.uuid4().hex[:12]}"
    coord = coordinator(url)
    coord.create_federation(federation)
    silos = {n: enrolled_silo(url, coord, federation, n) for n in ("a", "b", "c")}
    run = coord.create_run(RunCreate(spec=SPEC.model_copy(update={"federation": federation})))
    initial = deltas(99)
    coord.put_initial_model(run.run_id, tensors.encode(dict(zip(NAMES, initial, strict=True))))
    coord.start_run(run.run_id)
    coord.open_round(run.run_id, RoundOpen(round=1, deadline_s=60))
    validate_all(silos, run.run_id)  # the gate's signed row counts bound n_examples
    return Fed(url, coord, silos, run.run_id, initial, federation)


def states(fed: Fed, round_: int = 1) -> dict[str, str]:
    return {s.silo: s.state for s in fed.coord.wait_round(fed.run_id, round_, 0).silos}
