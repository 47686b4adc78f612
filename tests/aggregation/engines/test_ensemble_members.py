"""An ensemble run's members round on a live service (SQLite and PostgreSQL): each silo is
asked for its own kind, a malformed or wrong-kind member is refused naming the silo and round,
and at close the run's model is one artifact listing every member's hash, weights uniform."""

from __future__ import annotations

import base64
import hashlib
import json

import numpy as np
import pytest
from support.live_service import coordinator, enrolled_silo, service_in_thread

from schemas.ensemble import EnsembleArtifact, EnsembleSpec
from schemas.specs import ModelSpec, RunSpec
from schemas.wire import RoundOpen, RunCreate
from silos.client_errors import AlreadyAnswered, InvalidPayload
from silos.local_models import LocalParams, train_local

KINDS = {"default": "logreg", "b": "lightgbm"}
SPEC = RunSpec(
    federation="f",
    dataset="toy",
    model=ModelSpec(kind="logreg", n_features=3),
    min_silos=2,
    rounds=2,
    ensemble=EnsembleSpec(kinds=KINDS),  # type: ignore[arg-type]
)


def _member(kind: str, seed: int, n_features: int = 3) -> tuple[bytes, str]:
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(40, n_features)).astype(np.float32)
    y = (X[:, 0] > 0).astype(np.float32)
    model = train_local(kind, X, y, params=LocalParams(epochs=2, n_trees=3))
    doc = {"kind": kind, "n_train": 40, "model_b64": base64.b64encode(model.to_bytes()).decode()}
    return json.dumps(doc).encode(), model.sha256


def test_members_round_checks_and_stores_one_artifact(db_url: str, tmp_path) -> None:  # type: ignore[no-untyped-def]
    with service_in_thread(tmp_path / "svc", db_url) as url:
        coord = coordinator(url)
        coord.create_federation("f")
        silos = {n: enrolled_silo(url, coord, "f", n) for n in ("a", "b")}
        run = coord.create_run(RunCreate(spec=SPEC))
        with pytest.raises(InvalidPayload, match="is an ensemble run"):
            coord.put_initial_model(run.run_id, b"not empty")
        coord.put_initial_model(run.run_id, b"")
        coord.start_run(run.run_id)
        coord.open_round(run.run_id, RoundOpen(round=1, deadline_s=60))
        hashes = {}
        for seed, (name, client) in enumerate(silos.items()):
            task = client.next_task(wait_s=0)
            assert task is not None and task.type == "extension", task
            assert task.mode == "ensemble-members"
            kind = task.body["kind"]
            assert kind == ("lightgbm" if name == "b" else "logreg")
            with pytest.raises(InvalidPayload, match=f"member from silo '{name}', round 1"):
                client.submit_extension(run.run_id, 1, b"not json")
            other = "xgboost" if kind != "xgboost" else "logreg"
            wrong, _ = _member(other, seed)
            with pytest.raises(InvalidPayload, match=f"asks this silo for a {kind} member"):
                client.submit_extension(run.run_id, 1, wrong)
            four, _ = _member(str(kind), seed, n_features=4)
            with pytest.raises(InvalidPayload, match="of 4 features; the run asks for .* of 3"):
                client.submit_extension(run.run_id, 1, four)
            body, hashes[name] = _member(str(kind), seed)
            assert client.submit_extension(run.run_id, 1, body)["duplicate"] is False
            assert client.submit_extension(run.run_id, 1, body)["duplicate"] is True
            with pytest.raises(AlreadyAnswered):
                client.submit_extension(run.run_id, 1, _member(str(kind), seed + 9)[0])
        out = coord.close_round(run.run_id, 1)
        assert out.status == "aggregated" and out.model_version == 1
        payload = coord.download_model(run.run_id, 1)
        artifact = EnsembleArtifact.model_validate_json(payload)
        assert [(m.silo, m.kind, m.sha256) for m in artifact.members] == [
            ("a", "logreg", hashes["a"]),
            ("b", "lightgbm", hashes["b"]),
        ]
        assert artifact.weights == [0.5, 0.5] and artifact.weight_round == 0
        assert all(
            hashlib.sha256(m.model_bytes()).hexdigest() == m.sha256 for m in artifact.members
        )
        aggregate = next(
            json.loads(e.payload) for e in coord.ledger(run.run_id) if e.kind == "aggregate"
        )
        assert {c["silo"]: c["digest"] for c in aggregate["contributors"]} == hashes
        assert [m["sha256"] for m in aggregate["ensemble"]] == [hashes["a"], hashes["b"]]
