"""A coordinator whose run is cancelled, by `fedsilo runs cancel` between two rounds or by a
Prefect cancel of its flow run: the next round's opening is a cancellation, not a failure
(RunCancelled, so the flow run ends Cancelled without a retry), and the ``on_cancellation``
hook cancels the service's run of the flow run it is given, no other."""

from __future__ import annotations

import uuid
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from support.live_service import coordinator, enrolled_silo, service_in_thread

from flows.admin_token import private_token_file
from flows.coordinator import federated_training, run_round
from flows.exceptions import RunCancelled
from flows.flow_cancel import cancel_run_of, cancel_service_run
from flows.service_client import CoordinatorClient
from schemas import tensors
from schemas.specs import ModelSpec, RunSpec, SecureAggregationSpec, param_shapes
from schemas.wire import RunCreate

MODEL = ModelSpec(kind="logreg", n_features=3)


def _started_run(coord: CoordinatorClient, flow_run_id: str | None = None) -> str:
    spec = RunSpec(
        federation="f",
        dataset="toy",
        model=MODEL,
        rounds=3,
        min_silos=1,
        secure_aggregation=SecureAggregationSpec(enabled=False),
    )
    run = coord.create_run(RunCreate(spec=spec, prefect_flow_run_id=flow_run_id))
    zeros = {n: np.zeros(s, np.float32) for n, s in param_shapes(MODEL)}
    coord.put_initial_model(run.run_id, tensors.encode(zeros))
    coord.start_run(run.run_id)
    return run.run_id


@pytest.fixture
def coord(sqlite_url: str, tmp_path: Path):  # type: ignore[no-untyped-def]
    with service_in_thread(tmp_path / "svc", sqlite_url) as url:
        client = coordinator(url)
        client.create_federation("f")
        enrolled_silo(url, client, "f", "a")
        yield client


def test_a_cancel_between_rounds_is_a_cancellation(coord: CoordinatorClient) -> None:
    run_id = _started_run(coord)
    coord.cancel_run(run_id, "wrong dataset")
    with pytest.raises(RunCancelled, match="wrong dataset"):  # was the open's 409 Conflict
        run_round.fn(coord, run_id, 1, "train", 60.0)


def test_the_cancellation_hook_cancels_this_flow_runs_run_only(coord: CoordinatorClient) -> None:
    assert cancel_service_run in federated_training.on_cancellation_hooks
    mine, other = str(uuid.uuid4()), str(uuid.uuid4())
    run_id, other_run = _started_run(coord, mine), _started_run(coord, other)
    with private_token_file(coord.token) as token_file:
        params = {
            "service_urls": list(coord.urls),
            "federation": "f",
            "admin_token_file": str(token_file),
        }
        assert cancel_run_of(mine, params) == run_id
        assert cancel_run_of(mine, params) is None  # nothing running any more
        assert coord.get_run(other_run).status == "running"  # another flow run's run
        flow_run = SimpleNamespace(id=uuid.UUID(other), parameters=params)
        cancel_service_run(federated_training, flow_run, None)  # type: ignore[arg-type]
    ended = coord.get_run(run_id)
    assert ended.status == "cancelled"
    assert f"Prefect flow run {mine} was cancelled" in (ended.reason or "")
    assert coord.get_run(other_run).status == "cancelled"  # the hook, as Prefect calls it
    # an unreadable token is logged, never raised: the flow run's cancellation stands
    third = _started_run(coord, str(uuid.uuid4()))
    third_flow_run = coord.get_run(third).prefect_flow_run_id or ""
    assert cancel_run_of(third_flow_run, {**params, "admin_token_file": "/x"}) is None
    assert coord.get_run(third).status == "running"
