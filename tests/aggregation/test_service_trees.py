"""Tree runs at the service over real HTTP (SQLite and PostgreSQL): sealed updates, the bagging
merge and the cyclic chain, and every bad input refused with state left unchanged."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import xgboost as xgb
from support.live_service import coordinator, enrolled_silo, service_in_thread
from support.validation import validate_all

from aggregation.trees.models import merge_bagging, predict_proba
from flows.service_client import CoordinatorClient
from schemas.sealed import seal
from schemas.specs import RunSpec, SecureAggregationSpec
from schemas.tasks import Task
from schemas.tree_params import TreeSpec
from schemas.tree_payload import TreeUpdateHeader, decode_tree_update, encode_tree_update
from schemas.wire import RoundOpen, RunCreate
from silos.client import SiloClient
from silos.client_errors import ServiceRejected
from silos.tree_trainer import build_update, train_trees

N_FEATURES = 4


def tree_spec(mode: str = "bagging", kind: str = "xgboost") -> TreeSpec:
    params = {"max_depth": 2} if kind == "xgboost" else {"num_leaves": 4, "min_data_in_leaf": 5}
    return TreeSpec.model_validate(
        {
            "kind": kind,
            "mode": mode,
            "n_features": N_FEATURES,
            "trees_per_round": 2,
            "params": params,
        }
    )


def run_spec(trees: TreeSpec) -> RunSpec:
    return RunSpec(
        federation="f",
        dataset="toy",
        trees=trees,
        rounds=3,
        min_silos=2,
        secure_aggregation=SecureAggregationSpec(enabled=False),
    )


def data(seed: int, n: int = 200) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, N_FEATURES)).astype(np.float32)
    y = (X[:, 0] + 0.5 * X[:, 1] + rng.normal(scale=0.5, size=n) > 0).astype(np.float32)
    return X, y


@dataclass
class Fed:
    coord: CoordinatorClient
    silos: dict[str, SiloClient]
    run_id: str


def start(url: str, trees: TreeSpec) -> Fed:
    coord = coordinator(url)
    coord.create_federation("f")
    silos = {n: enrolled_silo(url, coord, "f", n) for n in ("a", "b", "c")}
    run = coord.create_run(RunCreate(spec=run_spec(trees)))
    coord.put_initial_model(run.run_id, b"")
    coord.start_run(run.run_id)
    coord.open_round(run.run_id, RoundOpen(round=1, kind="train", deadline_s=60))
    validate_all(silos, run.run_id)  # the gate's signed row counts bound n_examples
    return Fed(coord, silos, run.run_id)


@pytest.fixture
def service(db_url: str, tmp_path: Path) -> Iterator[str]:
    with service_in_thread(tmp_path / "svc", db_url) as url:
        yield url


def grow(client: SiloClient, task: Task, seed: int) -> tuple[bytes, bytes | None]:
    """What a silo does: fetch the base, boost, wrap; returns (envelope, base)."""
    assert task.spec is not None and task.spec.trees is not None
    base = client.tree_base(task.run_id, task.round)
    result = train_trees(task.spec.trees, base, *data(seed), seed=0)
    envelope = build_update(
        result,
        task.spec.trees,
        run_id=task.run_id,
        round_num=task.round,
        silo=client.silo,
        global_model=base,
    )
    return envelope, base


def send(client: SiloClient, task: Task, envelope: bytes, round_num: int | None = None) -> dict:  # type: ignore[type-arg]
    assert task.trees is not None
    number = task.round if round_num is None else round_num
    sealed = seal(
        envelope,
        service_public=bytes.fromhex(task.trees.seal_key),
        silo_key=client.key,
        run_id=task.run_id,
        round_num=number,
        silo=client.silo,
    )
    header, _ = decode_tree_update(envelope)
    digest = hashlib.sha256(envelope).hexdigest()
    return client.submit_trees(task.run_id, number, sealed, digest, header.n_examples)


def task_of(client: SiloClient, run_id: str) -> Task:
    task = client.next_task(wait_s=5, run_id=run_id)
    assert task is not None and task.type == "tree_train"
    return task


def test_bagging_round_merges_sealed_updates_into_one_native_model(service: str) -> None:
    fed = start(service, tree_spec())
    sent = {}
    for seed, (name, client) in enumerate(fed.silos.items()):
        task = task_of(client, fed.run_id)
        assert task.trees is not None and task.trees.base_model_sha256 is None
        envelope, _ = grow(client, task, seed)
        answer = send(client, task, envelope)
        assert answer["duplicate"] is False and answer["receipt"]
        assert send(client, task, envelope)["duplicate"] is True  # a retry counts once
        header, trees = decode_tree_update(envelope)
        sent[name] = (trees, header.n_examples)
    out = fed.coord.close_round(fed.run_id, 1)
    assert out.status == "aggregated"
    model = fed.coord.download_model(fed.run_id, 1)
    assert model == merge_bagging("xgboost", None, sent)  # exactly the documented rule
    X, _ = data(9)
    booster = xgb.Booster(model_file=bytearray(model))
    np.testing.assert_allclose(
        booster.predict(xgb.DMatrix(X)), predict_proba("xgboost", model, X), rtol=1e-5, atol=1e-6
    )
    # round 2 hands every silo the merged model to grow from
    fed.coord.open_round(fed.run_id, RoundOpen(round=2, kind="train", deadline_s=60))
    task = task_of(fed.silos["a"], fed.run_id)
    assert task.trees is not None
    assert task.trees.base_model_sha256 == hashlib.sha256(model).hexdigest()


@pytest.mark.parametrize("kind", ["xgboost", "lightgbm"])
def test_cyclic_round_hands_the_chain_on_in_turn(service: str, kind: str) -> None:
    fed = start(service, tree_spec("cyclic", kind))
    order = ["a", "b", "c"]  # round 1: the participants in name order
    assert fed.silos["b"].next_task(wait_s=0.2, run_id=fed.run_id) is None  # not b's turn yet
    previous_sha = None
    for seed, name in enumerate(order):
        client = fed.silos[name]
        task = task_of(client, fed.run_id)
        assert task.trees is not None and task.trees.order == order
        assert task.trees.base_model_sha256 == previous_sha
        envelope, _ = grow(client, task, seed)
        send(client, task, envelope)
        chain = client.tree_base(fed.run_id, 1)
        assert chain is not None
        previous_sha = hashlib.sha256(chain).hexdigest()
    out = fed.coord.close_round(fed.run_id, 1)
    assert out.status == "aggregated" and out.model_sha256 == previous_sha
    fed.coord.open_round(fed.run_id, RoundOpen(round=2, kind="train", deadline_s=60))
    task = task_of(fed.silos["b"], fed.run_id)  # round 2 starts with b
    assert task.trees is not None and task.trees.order == ["b", "c", "a"]


def _rejected(client: SiloClient, task: Task, envelope: bytes, match: str, **kw: int) -> None:
    with pytest.raises(ServiceRejected) as info:
        send(client, task, envelope, **kw)
    assert info.value.status == 422, info.value.detail
    assert match in info.value.detail and f"silo {client.silo!r}" in info.value.detail


def test_bad_tree_updates_are_refused_and_change_nothing(service: str) -> None:
    fed = start(service, tree_spec())
    a = fed.silos["a"]
    task = task_of(a, fed.run_id)
    envelope, _ = grow(a, task, 0)
    header, trees = decode_tree_update(envelope)

    def rewrap(model: bytes, **changes: object) -> bytes:
        h = header.model_copy(update={"model_sha256": hashlib.sha256(model).hexdigest(), **changes})
        return encode_tree_update(TreeUpdateHeader.model_validate(h.model_dump()), model)

    # a model file that does not parse
    _rejected(a, task, rewrap(b'{"learner": {'), "submitted model")
    # trees with another feature count
    other = TreeSpec.model_validate({**tree_spec().model_dump(), "n_features": N_FEATURES + 2})
    X, y = data(1)
    wide = train_trees(other, None, np.hstack([X, X[:, :2]]), y).model
    _rejected(a, task, rewrap(wide), "features")
    # trees grown from another model version
    _rejected(a, task, rewrap(trees, base_model_sha256="0" * 64), "grown from model")
    # trees bound to another round (sealed for round 1, envelope says round 2)
    _rejected(a, task, rewrap(trees, round=2), "bound to run")
    # a seal made for another round cannot be opened for this one
    with pytest.raises(ServiceRejected) as info:
        send(a, task, envelope, round_num=2)
    assert info.value.status in (404, 409, 422)
    # a tensor update to a tree run
    with pytest.raises(ServiceRejected, match="sealed"):
        a.submit_update(fed.run_id, 1, b"not tensors")
    out = fed.coord.wait_round(fed.run_id, 1, wait_s=0)
    assert {s.silo: s.state for s in out.silos} == dict.fromkeys("abc", "waiting")
    # refusals are counted (rejection_counts), not appended: the ledger gets one summary
    # entry ("rejections") when the round closes
    kinds = {e.kind for e in fed.coord.ledger(fed.run_id)}
    assert not kinds & {"update_rejected", "rejections"}
    # the honest update is still accepted afterwards
    assert send(a, task, envelope)["duplicate"] is False


def test_collective_run_refused_without_certificates(service: str) -> None:
    coord = coordinator(service)
    coord.create_federation("f")
    enrolled_silo(service, coord, "f", "a")
    enrolled_silo(service, coord, "f", "b")
    with pytest.raises(ServiceRejected) as info:
        coord.create_run(RunCreate(spec=run_spec(tree_spec("collective"))))
    assert info.value.status == 409 and "mutual TLS" in info.value.detail
