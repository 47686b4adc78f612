"""A plugin round mode end to end on a live service (SQLite and PostgreSQL): the setting
loads the module, a run picks the mode with ``RunSpec.mode``, silos get `ExtensionTask`s and
answer through the generic extension route, the engine closes the round."""

from __future__ import annotations

import json

import numpy as np
import pytest
from support.live_service import coordinator, enrolled_silo, service_in_thread

from schemas import tensors
from schemas.specs import ModelSpec, RunSpec, SecureAggregationSpec, param_shapes
from schemas.wire import RoundOpen, RunCreate
from silos.client_errors import AlreadyAnswered, Conflict, InvalidPayload

MODEL = ModelSpec(kind="logreg", n_features=3)
SPEC = RunSpec(
    federation="f",
    dataset="toy",
    model=MODEL,
    min_silos=2,
    secure_aggregation=SecureAggregationSpec(enabled=False),
    mode="echo",
)


def initial() -> bytes:
    return tensors.encode({n: np.zeros(s, dtype=np.float32) for n, s in param_shapes(MODEL)})


def test_a_plugin_mode_runs_a_round(db_url: str, tmp_path) -> None:  # type: ignore[no-untyped-def]
    with service_in_thread(tmp_path / "svc", db_url, plugins=["echo_plugin"]) as url:
        coord = coordinator(url)
        coord.create_federation("f")
        silos = {n: enrolled_silo(url, coord, "f", n) for n in ("a", "b")}
        with pytest.raises(Conflict, match="no round engine is registered for mode 'nope'"):
            coord.create_run(RunCreate(spec=SPEC.model_copy(update={"mode": "nope"})))
        run = coord.create_run(RunCreate(spec=SPEC))
        coord.put_initial_model(run.run_id, initial())
        coord.start_run(run.run_id)
        coord.open_round(run.run_id, RoundOpen(round=1, deadline_s=60))
        for value, (name, client) in enumerate(silos.items(), start=1):
            task = client.next_task(wait_s=0)
            assert task is not None and task.type == "extension", task
            assert task.mode == "echo" and task.body["silo"] == name
            with pytest.raises(InvalidPayload, match="echo answer from silo"):
                client.submit_extension(run.run_id, 1, b"not json")
            answer = client.submit_extension(run.run_id, 1, json.dumps(value).encode())
            assert answer == {"duplicate": False, "value": float(value)}
            again = client.submit_extension(run.run_id, 1, json.dumps(value).encode())
            assert again["duplicate"] is True
            with pytest.raises(AlreadyAnswered):
                client.submit_extension(run.run_id, 1, b"42")
            assert client.next_task(wait_s=0) is None
        out = coord.close_round(run.run_id, 1)
        assert out.status == "aggregated" and out.model_version == 1
        assert json.loads(coord.download_model(run.run_id, 1)) == {"sum": 3.0}
        entries = coord.ledger(run.run_id)
        kinds = [e.kind for e in entries]
        assert kinds[-3:] == ["aggregate", "model_saved", "rejections"]
        # one summary at close: per silo, the malformed and the second answer
        assert '"total": 4' in entries[-1].payload or '"total":4' in entries[-1].payload
