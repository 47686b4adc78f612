"""Three silos in a secure-aggregation run of a 3-feature logistic regression, on a service in
a thread (both backends): what the tests of a secure round's requests start from."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from flows.service_client import CoordinatorClient
from schemas import tensors
from schemas.specs import ModelSpec, RunSpec, SecureAggregationSpec, param_shapes
from silos.client import SiloClient
from support.live_service import coordinator, enrolled_silo, service_in_thread, started_run
from support.validation import validate

MODEL = ModelSpec(kind="logreg", n_features=3)
SHAPES = param_shapes(MODEL)
DIM = sum(int(np.prod(s)) for _, s in SHAPES)
SILOS = ("a", "b", "c")


@contextmanager
def secure_toy_run(
    db_url: str, tmp_path: Path
) -> Iterator[tuple[CoordinatorClient, dict[str, SiloClient], str]]:
    """The coordinator, the silos (validated, 100 rows each) and the started run's id."""
    spec = RunSpec(
        federation="f",
        dataset="toy",
        model=MODEL,
        rounds=2,
        min_silos=len(SILOS),
        secure_aggregation=SecureAggregationSpec(enabled=True, clip=5.0, threshold=2),
    )
    with service_in_thread(tmp_path / "svc", db_url) as url:
        coord = coordinator(url)
        coord.create_federation("f")
        silos = {n: enrolled_silo(url, coord, "f", n) for n in SILOS}
        run_id = started_run(coord, spec)
        for client in silos.values():
            validate(client, run_id, n_rows=100)
        yield coord, silos, run_id


def aggregated(coord: CoordinatorClient, run_id: str, version: int) -> np.ndarray:
    """Model `version` of the run, flattened."""
    got = tensors.decode_expected(coord.download_model(run_id, version), SHAPES)[0]
    return np.concatenate([g.reshape(-1) for g in got])
