"""A SCAFFOLD round, secure and plain, through the real service over HTTP: each silo trains
with the silo agent's own SCAFFOLD step (`silos.scaffold`) and sends its model and control
deltas as one update (masked as one vector by `silos.secure_round` when secure); the service
moves the model as FedAvg does and its control variate by the mean control delta, which it
then serves with the new model version."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from support.live_service import coordinator, enrolled_silo, service_in_thread
from support.validation import validate_all

from schemas import tensors
from schemas.specs import (
    ModelSpec,
    RunSpec,
    SecureAggregationSpec,
    StrategySpec,
    TrainingSpec,
    param_shapes,
    update_shapes,
)
from schemas.wire import Metrics, RoundOpen, RunCreate
from silos import scaffold, secure_round
from silos.client import SiloClient
from silos.client_errors import ServiceRejected

MODEL = ModelSpec(kind="logreg", n_features=3)
SHAPES = param_shapes(MODEL)
TRAINING = TrainingSpec(local_epochs=2, batch_size=16, lr=0.1)
METRICS = Metrics(n_test=10, loss=0.5, accuracy=0.8, auc=0.9).model_dump_json()
ROWS = {"a": 30, "b": 60, "c": 90}


def _task(client: SiloClient, expected: str):  # type: ignore[no-untyped-def]
    task = client.next_task(wait_s=2)
    assert task is not None and task.type == expected, task
    return task


def _data(name: str) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(ord(name))
    X = rng.normal(loc=ord(name) - ord("b"), size=(ROWS[name], 3)).astype(np.float32)
    y = (X[:, 0] + rng.normal(size=ROWS[name]) > 0).astype(np.float32)
    return X, y


def _flat(arrays: list[np.ndarray]) -> np.ndarray:
    return np.concatenate([a.ravel() for a in arrays]).astype(np.float64)


@pytest.mark.parametrize("secure", [True, False], ids=["secure", "plain"])
def test_scaffold_round_moves_model_and_control_variate(
    db_url: str, tmp_path: Path, secure: bool
) -> None:
    spec = RunSpec(
        federation="f",
        dataset="toy",
        model=MODEL,
        strategy=StrategySpec(name="scaffold"),
        training=TRAINING,
        rounds=2,
        min_silos=2,
        secure_aggregation=SecureAggregationSpec(enabled=secure, clip=100.0, threshold=2),
    )
    workspace = tmp_path / "silo-ws"
    with service_in_thread(tmp_path / "svc", db_url) as url:
        coord = coordinator(url)
        coord.create_federation("f")
        silos = {n: enrolled_silo(url, coord, "f", n) for n in ROWS}
        run_id = coord.create_run(RunCreate(spec=spec)).run_id
        rng = np.random.default_rng(0)
        initial = [rng.normal(size=shape).astype(np.float32) for _, shape in SHAPES]
        names = [n for n, _ in SHAPES]
        coord.put_initial_model(run_id, tensors.encode(dict(zip(names, initial, strict=True))))
        coord.start_run(run_id)
        coord.open_round(run_id, RoundOpen(round=1, deadline_s=60))
        validate_all(silos, run_id)

        model_deltas, control_deltas = {}, {}

        def train(name: str, client: SiloClient) -> list[np.ndarray]:
            """The agent's SCAFFOLD round (silos.handlers.training): c, c_i, corrected steps."""
            c, _ = tensors.decode_expected(client.download_control(run_id, 0), SHAPES)
            assert all(not a.any() for a in c)  # zeros before the first aggregate
            c_i = scaffold.load_control(workspace / name, run_id, 1, MODEL)
            X, y = _data(name)
            step = scaffold.corrected_training(MODEL, initial, X, y, TRAINING, c, c_i)
            scaffold.save_control(workspace / name, run_id, 1, MODEL, step.control)
            delta = [n - o for n, o in zip(step.params, initial, strict=True)]
            model_deltas[name], control_deltas[name] = _flat(delta), _flat(step.control_delta)
            return delta + step.control_delta

        if secure:
            _secure_round(run_id, silos, workspace, train)
        else:
            for name, client in silos.items():
                _task(client, "train")
                update = train(name, client)
                with pytest.raises(ServiceRejected) as err:  # the model delta alone is refused
                    client.submit_update(run_id, 1, _payload(run_id, name, update[:2], names))
                assert err.value.status == 422 and f"silo {name!r}" in err.value.detail
                wire = [n for n, _ in update_shapes(spec)]
                client.submit_update(run_id, 1, _payload(run_id, name, update, wire))
            coord.close_round(run_id, 1)  # the coordinator closes a plain round
        assert coord.wait_round(run_id, 1, wait_s=10).status == "aggregated"

        weights = {n: r / sum(ROWS.values()) for n, r in ROWS.items()}
        new_model = _flat(tensors.decode_expected(coord.download_model(run_id, 1), SHAPES)[0])
        expected = _flat(initial) + sum(weights[n] * model_deltas[n] for n in ROWS)
        np.testing.assert_allclose(new_model, expected, atol=1e-5)
        served = silos["a"].download_control(run_id, 1)
        control = _flat(tensors.decode_expected(served, SHAPES)[0])
        expected_c = sum(weights[n] * control_deltas[n] for n in ROWS)  # all 3 of 3 answered
        assert np.abs(expected_c).max() > 0.01  # a non-trivial control variate
        np.testing.assert_allclose(control, expected_c, atol=1e-5)

        with pytest.raises(ServiceRejected) as err:  # c belongs to the latest version only
            silos["a"].download_control(run_id, 0)
        assert err.value.status == 409 and "belongs to model version 1" in err.value.detail
        aggregate = next(e for e in coord.ledger(run_id) if e.kind == "aggregate")
        assert '"strategy":"scaffold"' in aggregate.payload
        seen = "false" if secure else "true"
        assert f'"individual_updates_seen_by_service":{seen}' in aggregate.payload


def _payload(run_id: str, name: str, arrays: list[np.ndarray], names: list[str]) -> bytes:
    meta = {"run_id": run_id, "round": "1", "n_examples": str(ROWS[name]), "metrics": METRICS}
    return tensors.encode(dict(zip(names, arrays, strict=True)), meta)


def _secure_round(
    run_id: str,
    silos: dict[str, SiloClient],
    workspace: Path,
    train: Callable[[str, SiloClient], list[np.ndarray]],
) -> None:
    """The secure stages, the model and control deltas masked as one vector."""
    for name, client in silos.items():
        task = _task(client, "secagg_advertise")
        secure_round.advertise(client, client.key, task, workspace / name, n_examples=ROWS[name])
    for name, client in silos.items():
        secure_round.share(client, client.key, _task(client, "secagg_share"), workspace / name)
    for name, client in silos.items():
        task = _task(client, "secagg_masked")
        flat = _flat(train(name, client))
        assert np.linalg.norm(flat) < 100.0  # within the clip: the sum is exact
        assert task.secagg is not None and task.secagg.weight is not None
        message = secure_round.masked_update(
            client, client.key, task, workspace / name, task.secagg.weight * flat
        )
        client.submit_masked(run_id, 1, message, ROWS[name], 0.01, METRICS)
    for name, client in silos.items():
        secure_round.unmask(client, client.key, _task(client, "secagg_unmask"), workspace / name)
