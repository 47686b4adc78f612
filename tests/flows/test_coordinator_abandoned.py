"""A coordinator that comes back (`fedsilo train --resume`, a Prefect retry of its crashed flow
run) to a run the service failed as abandoned (aggregation/service/abandoned.py) ends its flow
run failed, saying why, without touching the run. A real service (1 s grace) and a real
Prefect server."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from prefect.client.orchestration import get_client
from support.live_service import (
    coordinator,
    enrolled_silo,
    publish_shipped_contract,
    service_in_thread,
)

from flows.coordinator import federated_training
from schemas import tensors
from schemas.contracts.loader import load_contract
from schemas.specs import ModelSpec, RunSpec, SecureAggregationSpec, param_shapes
from schemas.wire import RoundOpen, RunCreate
from silos.features import FeaturePipeline

FED = "heartfed"
WAIT_S = 120.0


def wait_until(check: Callable[[], Any], what: str) -> Any:
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.1)
    pytest.fail(f"timed out waiting for {what}")


@pytest.fixture
def service(tmp_path: Path, sqlite_url: str, prefect_api_url: str) -> Iterator[str]:
    with service_in_thread(tmp_path / "service", sqlite_url, abandoned_after_s=1.0) as url:
        yield url


def test_a_coordinator_resuming_an_abandoned_run_ends_failed_saying_so(
    service: str, tmp_path: Path
) -> None:
    coord = coordinator(service)
    coord.create_federation(FED)
    version = publish_shipped_contract(coord, FED, "heart_disease")
    for name in ("alpha", "bravo"):
        enrolled_silo(service, coord, FED, name)
    n_features = FeaturePipeline.from_contract(load_contract("heart_disease")).n_features
    model = ModelSpec(kind="logreg", n_features=n_features)
    spec = RunSpec(
        federation=FED,
        dataset="heart_disease",
        contract_version=version,
        model=model,
        rounds=2,
        min_silos=2,
        round_deadline_s=1.0,
        secure_aggregation=SecureAggregationSpec(enabled=False),
    )
    # the coordinator that created the run and opened round 1 is gone
    run = coord.create_run(RunCreate(spec=spec))
    zeros = {n: np.zeros(s, np.float32) for n, s in param_shapes(model)}
    coord.put_initial_model(run.run_id, tensors.encode(zeros))
    coord.start_run(run.run_id)
    first = coord.open_round(run.run_id, RoundOpen(round=1, deadline_s=1.0))
    over = first.deadline_at + timedelta(seconds=1.2)
    wait_until(lambda: datetime.now(UTC) > over, "deadline + grace to pass")

    token_file = tmp_path / "admin.token"
    token_file.write_text("test-admin-token")
    token_file.chmod(0o600)
    flow = federated_training.with_options(retries=2, retry_delay_seconds=0)
    state = flow(
        service_urls=[service],
        admin_token_file=str(token_file),
        federation=FED,
        dataset="heart_disease",
        model=model,
        rounds=2,
        min_silos=2,
        round_deadline_s=1.0,
        secure_aggregation=SecureAggregationSpec(enabled=False),
        federation_statistics=False,
        resume_run_id=run.run_id,
        ready_timeout_s=0,
        output_dir=str(tmp_path / "models"),
        return_state=True,
    )
    assert state.is_failed(), state
    with get_client(sync_client=True) as prefect:  # the failure was final: no Prefect retry
        assert prefect.read_flow_run(state.state_details.flow_run_id).run_count == 1
    message = str(state.message)
    assert f"run {run.run_id} failed earlier: abandoned: its coordinator did not close round 1" in (
        message
    ), message
    after = coord.get_run(run.run_id)
    assert after.status == "failed" and (after.reason or "").startswith("abandoned: ")
    assert [r.status for r in coord.rounds(run.run_id)] == ["failed"]  # nothing reopened
    kinds = [e.kind for e in coord.ledger(run.run_id)]
    assert kinds.count("run_failed") == 1 and kinds.count("round_failed") == 1
