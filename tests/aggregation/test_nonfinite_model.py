"""A plain round whose aggregate is not finite fails instead of publishing the model: finite
float32 updates near float32's maximum overflow once added to the global model; the round's
``round_failed`` entry names the round and its contributors, and the previous model version
stays the latest. Large but finite updates still aggregate (the mean is taken in float64).
An asynchronous buffer that closes on such an update fails the same way, and the update that
closed it is accepted (it was a 409 that rolled the update back and left the buffer open)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from support.live_service import coordinator, enrolled_silo, service_in_thread
from support.validation import validate

from flows.service_client import CoordinatorClient
from schemas import tensors
from schemas.specs import AsyncSpec, ModelSpec, RunSpec, SecureAggregationSpec, param_shapes
from schemas.wire import RoundOpen, RunCreate
from silos.client import SiloClient
from silos.client_errors import NotFound

MODEL = ModelSpec(kind="logreg", n_features=3)
SHAPES = param_shapes(MODEL)
NAMES = [n for n, _ in SHAPES]
BIG = float(np.finfo(np.float32).max)  # 3.4e38, finite


@dataclass
class Fed:
    coord: CoordinatorClient
    silos: dict[str, SiloClient]
    run_id: str


def _arrays(value: float) -> list[np.ndarray]:
    return [np.full(s, value, np.float32) for _, s in SHAPES]


def _payload(arrays: list[np.ndarray], run_id: str, n: int) -> bytes:
    meta = {"run_id": run_id, "round": "1", "n_examples": str(n)}
    return tensors.encode(dict(zip(NAMES, arrays, strict=True)), meta)


def _federation(
    db_url: str, tmp_path: Path, initial: float, asynchronous: AsyncSpec | None = None
) -> Iterator[Fed]:
    spec = RunSpec(
        federation="f",
        dataset="toy",
        model=MODEL,
        rounds=2,
        min_silos=2,
        secure_aggregation=SecureAggregationSpec(enabled=False),
        asynchronous=asynchronous,
    )
    with service_in_thread(tmp_path / "svc", db_url) as url:
        coord = coordinator(url)
        coord.create_federation("f")
        silos = {n: enrolled_silo(url, coord, "f", n) for n in ("honest", "mallory")}
        run = coord.create_run(RunCreate(spec=spec))
        start = dict(zip(NAMES, _arrays(initial), strict=True))
        coord.put_initial_model(run.run_id, tensors.encode(start))
        coord.start_run(run.run_id)
        coord.open_round(run.run_id, RoundOpen(round=1, deadline_s=60))
        for client in silos.values():
            validate(client, run.run_id, n_rows=1000)
        yield Fed(coord, silos, run.run_id)


@pytest.fixture
def large_model(db_url: str, tmp_path: Path) -> Iterator[Fed]:
    yield from _federation(db_url, tmp_path, initial=BIG / 2)


@pytest.fixture
def large_async_model(db_url: str, tmp_path: Path) -> Iterator[Fed]:
    yield from _federation(db_url, tmp_path, initial=BIG / 2, asynchronous=AsyncSpec(buffer_size=2))


@pytest.fixture
def zero_model(db_url: str, tmp_path: Path) -> Iterator[Fed]:
    yield from _federation(db_url, tmp_path, initial=0.0)


def test_an_overflowing_aggregate_fails_the_round_and_keeps_the_model(large_model: Fed) -> None:
    fed = large_model
    fed.silos["honest"].submit_update(fed.run_id, 1, _payload(_arrays(0.01), fed.run_id, 10))
    fed.silos["mallory"].submit_update(fed.run_id, 1, _payload(_arrays(BIG), fed.run_id, 1000))
    out = fed.coord.close_round(fed.run_id, 1)
    assert out.status == "failed"
    reason = out.reason or ""
    assert "round 1" in reason and "not finite" in reason
    assert "honest (n_examples 10" in reason and "mallory (n_examples 1000" in reason
    assert "model version 0 stays" in reason
    run = fed.coord.get_run(fed.run_id)
    assert run.latest_model_version == 0
    with pytest.raises(NotFound):
        fed.coord.download_model(fed.run_id, 1)
    entries = fed.coord.ledger(run_id=fed.run_id)
    failed = [e for e in entries if e.kind == "round_failed"]
    assert len(failed) == 1 and "not finite" in failed[0].payload and "mallory" in failed[0].payload
    assert not [e for e in entries if e.kind == "aggregate"]
    saved = [json.loads(e.payload)["version"] for e in entries if e.kind == "model_saved"]
    assert saved == [0]  # the initial model only
    again = fed.coord.close_round(fed.run_id, 1)  # a retried close returns the stored result
    assert again.status == "failed" and again.reason == reason


def test_large_finite_updates_still_aggregate(zero_model: Fed) -> None:
    fed = zero_model
    fed.silos["honest"].submit_update(fed.run_id, 1, _payload(_arrays(BIG), fed.run_id, 1000))
    fed.silos["mallory"].submit_update(fed.run_id, 1, _payload(_arrays(BIG), fed.run_id, 1000))
    assert fed.coord.close_round(fed.run_id, 1).status == "aggregated"
    model = tensors.decode_expected(fed.coord.download_model(fed.run_id, 1), SHAPES)[0]
    for got in model:  # summed in float32 the two would be inf; their mean is float32's max
        assert np.isfinite(got).all()
        np.testing.assert_allclose(got, BIG, rtol=1e-6)


def test_an_overflowing_buffer_fails_and_the_update_that_closed_it_is_kept(
    large_async_model: Fed,
) -> None:
    fed = large_async_model
    fed.silos["honest"].submit_update(fed.run_id, 1, _payload(_arrays(0.01), fed.run_id, 10))
    body = _payload(_arrays(BIG), fed.run_id, 1000)
    answer = fed.silos["mallory"].submit_update(fed.run_id, 1, body)  # the K-th: closes it
    assert not answer["duplicate"]
    out = fed.coord.wait_round(fed.run_id, 1, 0)
    assert out.status == "failed"
    assert "not finite" in (out.reason or "") and "mallory (n_examples 1000" in (out.reason or "")
    assert fed.coord.get_run(fed.run_id).latest_model_version == 0
    entries = fed.coord.ledger(run_id=fed.run_id)
    assert [e.kind for e in entries].count("round_failed") == 1
    assert not [e for e in entries if e.kind == "aggregate"]
    assert fed.silos["mallory"].submit_update(fed.run_id, 1, body)["duplicate"]
