"""A task brings its model inline when the poll asks (`schemas.tasks.INLINE_MODEL_TASKS`): the
silo's handler takes it through `SiloClient.download_model` without a request. A model above
the limit, or a poll that did not ask, leaves the task as before. Over real HTTP, both
backends."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from support.live_service import coordinator, enrolled_silo, recorded, service_in_thread

from aggregation.service import tasks as service_tasks
from flows.service_client import CoordinatorClient
from schemas import tensors
from schemas.specs import ModelSpec, RunSpec, SecureAggregationSpec, param_shapes
from schemas.tasks import TASK_ADAPTER, TrainTask
from schemas.wire import RoundOpen, RunCreate
from silos.client import SiloClient

SPEC = RunSpec(
    federation="f",
    dataset="toy",
    model=ModelSpec(kind="logreg", n_features=3),
    rounds=2,
    min_silos=1,
    secure_aggregation=SecureAggregationSpec(enabled=False),
)


@dataclass
class Fed:
    coord: CoordinatorClient
    silo: SiloClient
    run_id: str
    model: bytes


@pytest.fixture
def fed(db_url: str, tmp_path: Path) -> Iterator[Fed]:
    with service_in_thread(tmp_path / "svc", db_url) as url:
        coord = coordinator(url)
        coord.create_federation("f")
        silo = enrolled_silo(url, coord, "f", "a")
        run = coord.create_run(RunCreate(spec=SPEC))
        rng = np.random.default_rng(3)
        model = tensors.encode(
            {n: rng.normal(size=s).astype(np.float32) for n, s in param_shapes(SPEC.model)}
        )
        coord.put_initial_model(run.run_id, model)
        coord.start_run(run.run_id)
        coord.open_round(run.run_id, RoundOpen(round=1, kind="train", deadline_s=600))
        yield Fed(coord, silo, run.run_id, model)


def _model_gets(client: SiloClient) -> list[str]:
    """The paths of the model downloads `client` makes from now on."""
    return recorded(client, lambda method, path: method == "GET" and "/models/" in path)


def test_the_train_task_brings_its_model_and_the_handler_fetches_nothing(fed: Fed) -> None:
    gets = _model_gets(fed.silo)
    task = fed.silo.next_task(wait_s=5, run_id=fed.run_id)
    assert isinstance(task, TrainTask) and task.model_version == 0
    assert task.model_b64 is None  # handed to download_model, not kept on the task
    assert fed.silo.download_model(fed.run_id, 0) == fed.model
    assert gets == []
    # once: a second call (a retried handler) fetches it, the same bytes
    assert fed.silo.download_model(fed.run_id, 0) == fed.model
    assert gets == [f"/v1/silo/runs/{fed.run_id}/models/0"]


def test_a_poll_that_does_not_ask_gets_no_model(fed: Fed) -> None:
    resp = fed.silo.request("GET", f"/v1/silo/tasks?wait=5&run_id={fed.run_id}")
    task = TASK_ADAPTER.validate_json(resp.content)
    assert isinstance(task, TrainTask) and task.model_b64 is None
    resp = fed.silo.request("GET", f"/v1/silo/tasks?wait=5&run_id={fed.run_id}&inline_model=true")
    task = TASK_ADAPTER.validate_json(resp.content)
    assert task.model_b64 is not None and base64.b64decode(task.model_b64) == fed.model


def test_a_model_above_the_limit_is_fetched(fed: Fed, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(service_tasks, "INLINE_MODEL_MAX_BYTES", len(fed.model) - 1)
    gets = _model_gets(fed.silo)
    task = fed.silo.next_task(wait_s=5, run_id=fed.run_id)
    assert isinstance(task, TrainTask)
    assert fed.silo.download_model(fed.run_id, 0) == fed.model
    assert gets == [f"/v1/silo/runs/{fed.run_id}/models/0"]
