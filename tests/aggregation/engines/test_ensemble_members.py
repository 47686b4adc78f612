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

from schemas.ensemble import LOCAL_FORMAT, EnsembleArtifact, EnsembleSpec
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


def _doc(head: dict[str, object] | bytes, payload: bytes = b"", n_train: object = 40) -> bytes:
    """A member message around hand-made `silos.local_models` bytes (header, then payload)."""
    header = head if isinstance(head, bytes) else json.dumps(head).encode()
    kind = head.get("kind", "mlp") if isinstance(head, dict) else "mlp"
    model = base64.b64encode(header + b"\n" + payload).decode()
    return json.dumps({"kind": kind, "n_train": n_train, "model_b64": model}).encode()


def test_hostile_members_are_refused_naming_the_silo(db_url: str, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Nested past the recursion limit, counts past the int column, hidden sizes that are not a
    list, NaN or infinite parameters: each a 422 naming the silo and round (each was a 500, or
    stored to break every silo's weight round), and nothing stored."""
    kinds = {"default": "mlp", "b": "xgboost"}
    spec = SPEC.model_copy(update={"ensemble": EnsembleSpec(kinds=kinds)})  # type: ignore[arg-type]
    mlp = {"format": LOCAL_FORMAT, "kind": "mlp", "n_features": 3}
    deep = b"[" * 2000 + b"]" * 2000
    xgb = {"format": LOCAL_FORMAT, "kind": "xgboost", "n_features": 3}
    hostile = {
        "a": [
            (deep, "not a member message"),
            (b'{"kind": "mlp", "n_train": Infinity, "model_b64": "AA=="}', "n_train inf"),
            (_doc(mlp | {"hidden": []}, b"\0" * 16, n_train=2**31), "n_train 2147483648"),
            (_doc(mlp | {"hidden": []}, b"\0" * 16, n_train=40.5), "n_train 40.5"),
            (_doc(mlp | {"hidden": 5}), "hidden 5 is not a list"),
            (_doc(mlp | {"hidden": None}), "hidden None is not a list"),
            (_doc(mlp | {"hidden": [True]}), "hidden [True] is not a list"),
            (_doc(deep), "no fedsilo-local-model/1 header"),
            (_doc(mlp | {"hidden": []}, np.full(4, np.nan, "<f4").tobytes()), "not all finite"),
            (_doc(mlp | {"hidden": []}, np.full(4, np.inf, "<f4").tobytes()), "not all finite"),
        ],
        "b": [
            (_doc(xgb, deep), "not an XGBoost JSON model"),
            (
                _doc(
                    xgb, b'{"learner": {"learner_model_param": {"num_feature": "3"}}, "v": [NaN]}'
                ),
                "NaN is not finite",
            ),
            (
                _doc(
                    xgb, b'{"learner": {"learner_model_param": {"num_feature": "3"}}, "v": 1e999}'
                ),
                "1e999 is not finite",
            ),
        ],
    }
    with service_in_thread(tmp_path / "svc", db_url) as url:
        coord = coordinator(url)
        coord.create_federation("f")
        silos = {n: enrolled_silo(url, coord, "f", n) for n in ("a", "b")}
        run = coord.create_run(RunCreate(spec=spec)).run_id
        coord.put_initial_model(run, b"")
        coord.start_run(run)
        coord.open_round(run, RoundOpen(round=1, deadline_s=60))
        for name, cases in hostile.items():
            for body, says in cases:
                with pytest.raises(InvalidPayload) as refused:
                    silos[name].submit_extension(run, 1, body)
                assert f"member from silo '{name}', round 1" in refused.value.detail
                assert says in refused.value.detail
        assert {s.silo: s.state for s in coord.wait_round(run, 1, 0).silos} == {
            "a": "waiting",
            "b": "waiting",
        }
