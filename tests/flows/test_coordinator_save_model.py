"""The coordinator saves the run's final model only when the service's copy hashes to what the
ledger's ``model_saved`` entry records: the file it writes is the one people deploy, and the
service's database could have been altered since the model was made."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import create_engine, update
from support.live_service import coordinator, enrolled_silo, service_in_thread

from aggregation.service.tables import ModelVersion
from flows.coordinator import save_model
from flows.exceptions import RunFailed
from schemas import tensors
from schemas.specs import ModelSpec, RunSpec, SecureAggregationSpec, param_shapes
from schemas.wire import RunCreate

MODEL = ModelSpec(kind="logreg", n_features=3)


def test_the_saved_model_must_hash_to_the_ledgers_record(sqlite_url: str, tmp_path: Path) -> None:
    spec = RunSpec(
        federation="f",
        dataset="toy",
        model=MODEL,
        rounds=1,
        min_silos=1,
        secure_aggregation=SecureAggregationSpec(enabled=False),
    )
    with service_in_thread(tmp_path / "svc", sqlite_url) as url:
        coord = coordinator(url)
        coord.create_federation("f")
        enrolled_silo(url, coord, "f", "a")
        run_id = coord.create_run(RunCreate(spec=spec)).run_id
        start = tensors.encode({n: np.ones(s, np.float32) for n, s in param_shapes(MODEL)})
        coord.put_initial_model(run_id, start)
        coord.start_run(run_id)  # model_saved v0

        path, sha = save_model.fn(coord, run_id, 0, tmp_path / "out", ".safetensors")
        assert Path(path).read_bytes() == start and sha == hashlib.sha256(start).hexdigest()
        assert Path(f"{path}.sha256").read_text().split()[0] == sha

        altered = tensors.encode({n: np.full(s, 4.0, np.float32) for n, s in param_shapes(MODEL)})
        engine = create_engine(sqlite_url)
        with engine.begin() as conn:  # someone with the database's password
            conn.execute(
                update(ModelVersion)
                .where(ModelVersion.run_id == run_id, ModelVersion.version == 0)
                .values(payload=altered, sha256=hashlib.sha256(altered).hexdigest())
            )
        engine.dispose()
        with pytest.raises(RunFailed) as err:
            save_model.fn(coord, run_id, 0, tmp_path / "again", ".safetensors")
        assert f"run {run_id} model v0" in str(err.value)
        assert f"ledger records {sha[:12]}" in str(err.value)
        assert not (tmp_path / "again").exists()  # nothing written
