"""Signed declines through the real service over HTTP: a silo that cannot answer says so, the
ledger keeps its signed statement, and the round moves on without waiting for its deadline;
the round's progress names, per stage, only the silos it still waits for."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, get_args

import numpy as np
import pytest
from support.live_service import coordinator, enrolled_silo, service_in_thread
from support.validation import validate_all

from flows.service_client import CoordinatorClient
from schemas import tensors
from schemas.specs import ModelSpec, RunSpec, SecureAggregationSpec, param_shapes
from schemas.wire import DeclineCause, DeclinePayload, Metrics, RoundOpen, RoundOut, RunCreate
from silos import decline as silo_decline
from silos import secure_round
from silos.client import SiloClient
from silos.client_errors import ServiceRejected
from silos.decline import Declined

MODEL = ModelSpec(kind="logreg", n_features=3)
SHAPES = param_shapes(MODEL)
NAMES = [n for n, _ in SHAPES]
DIM = sum(int(np.prod(s)) for _, s in SHAPES)
DEADLINE_S = 600.0  # far beyond every test: a round that moves on did not wait for it
METRICS = Metrics(n_test=10, loss=0.5, accuracy=0.8, auc=0.9).model_dump_json()
WEIGHTS = {"a": 10, "b": 30, "c": 60}


@dataclass
class Fed:
    coord: CoordinatorClient
    silos: dict[str, SiloClient]
    run_id: str
    initial: np.ndarray
    workspace: Path


def _arrays(flat: np.ndarray) -> dict[str, np.ndarray]:
    out, start = {}, 0
    for name, shape in SHAPES:
        size = int(np.prod(shape))
        out[name] = flat[start : start + size].reshape(shape).astype(np.float32)
        start += size
    return out


@contextmanager
def _federation(db_url: str, tmp_path: Path, *, secure: bool) -> Iterator[Fed]:
    spec = RunSpec(
        federation="f",
        dataset="toy",
        model=MODEL,
        rounds=2,
        min_silos=2,
        secure_aggregation=SecureAggregationSpec(enabled=secure, clip=5.0, threshold=2),
    )
    with service_in_thread(tmp_path / "svc", db_url) as url:
        coord = coordinator(url)
        coord.create_federation("f")
        silos = {n: enrolled_silo(url, coord, "f", n) for n in WEIGHTS}
        run = coord.create_run(RunCreate(spec=spec))
        initial = np.random.default_rng(0).normal(size=DIM).astype(np.float32)
        coord.put_initial_model(run.run_id, tensors.encode(_arrays(initial)))
        coord.start_run(run.run_id)
        coord.open_round(run.run_id, RoundOpen(round=1, deadline_s=DEADLINE_S))
        validate_all(silos, run.run_id)
        yield Fed(coord, silos, run.run_id, initial, tmp_path / "silo-ws")


def decline(
    client: SiloClient,
    run_id: str,
    round_: int,
    scope: str = "round",
    cause: str = "data",
    reason: str = "the table holds one class only",
) -> dict[str, Any]:
    """Send `client`'s signed decline (unchecked here: the service is what checks it); the
    service's answer (receipt, duplicate)."""
    payload = {
        "silo": client.silo,
        "run_id": run_id,
        "round": round_,
        "scope": scope,
        "cause": cause,
        "reason": reason,
    }
    if cause in get_args(DeclineCause):
        DeclinePayload.model_validate(payload)  # what the silo agent builds, too
    return client.submit_statement(run_id, "decline", payload)


def _update(fed: Fed, name: str, round_: int, delta: np.ndarray) -> None:
    meta = {"run_id": fed.run_id, "round": str(round_), "n_examples": str(WEIGHTS[name])}
    fed.silos[name].submit_update(fed.run_id, round_, tensors.encode(_arrays(delta), meta))


def _model(fed: Fed, version: int) -> np.ndarray:
    payload = fed.coord.download_model(fed.run_id, version)
    return np.concatenate([a.ravel() for a in tensors.decode_expected(payload, SHAPES)[0]])


def _states(out: RoundOut) -> dict[str, str]:
    return {s.silo: s.state for s in out.silos}


def _rejected(call: Any) -> ServiceRejected:
    with pytest.raises(ServiceRejected) as err:
        call()
    return err.value


@pytest.fixture
def plain(db_url: str, tmp_path: Path) -> Iterator[Fed]:
    with _federation(db_url, tmp_path, secure=False) as fed:
        yield fed


def test_a_declined_round_moves_on_without_its_deadline(plain: Fed) -> None:
    fed = plain
    rng = np.random.default_rng(1)
    deltas = {n: rng.normal(scale=0.1, size=DIM).astype(np.float32) for n in WEIGHTS}
    started = time.monotonic()
    _update(fed, "a", 1, deltas["a"])
    _update(fed, "b", 1, deltas["b"])
    before = fed.coord.wait_round(fed.run_id, 1, 0)
    assert not before.complete and before.awaited == ["c"]

    first = decline(fed.silos["c"], fed.run_id, 1)
    assert first["receipt"] is not None and first["duplicate"] is False
    # the coordinator's long-poll returns at once: nobody is awaited any more
    out = fed.coord.wait_round(fed.run_id, 1, wait_s=30)
    assert out.complete and out.awaited == [] and out.status == "open"
    c_state = next(s for s in out.silos if s.silo == "c")
    assert (c_state.state, c_state.cause) == ("declined", "data")
    assert c_state.reason == "the table holds one class only"
    closed = fed.coord.close_round(fed.run_id, 1)
    assert closed.status == "aggregated", closed
    assert time.monotonic() - started < DEADLINE_S / 10
    mean = (WEIGHTS["a"] * deltas["a"] + WEIGHTS["b"] * deltas["b"]) / (WEIGHTS["a"] + WEIGHTS["b"])
    np.testing.assert_allclose(_model(fed, 1), fed.initial + mean, atol=1e-6)

    # the same decline again: the first receipt, no second ledger entry
    again = decline(fed.silos["c"], fed.run_id, 1)
    assert again["duplicate"] is True and again["receipt"] == first["receipt"]
    entries = [e for e in fed.coord.ledger(fed.run_id) if e.kind == "decline"]
    assert len(entries) == 1
    [entry] = entries
    assert entry.author == "silo:c" and entry.author_signature
    payload = json.loads(entry.payload)
    assert payload == {
        "silo": "c",
        "run_id": fed.run_id,
        "round": 1,
        "scope": "round",
        "cause": "data",
        "reason": "the table holds one class only",
    }
    aggregate = next(e for e in fed.coord.ledger(fed.run_id) if e.kind == "aggregate")
    assert [c["silo"] for c in json.loads(aggregate.payload)["contributors"]] == ["a", "b"]


def test_declines_that_cannot_apply_are_refused_naming_silo_and_round(plain: Fed) -> None:
    fed = plain
    _update(fed, "a", 1, np.zeros(DIM, np.float32))
    after_update = _rejected(lambda: decline(fed.silos["a"], fed.run_id, 1))
    assert after_update.status == 409
    assert "'a'" in after_update.detail and "round 1" in after_update.detail
    not_open = _rejected(lambda: decline(fed.silos["b"], fed.run_id, 2))
    assert not_open.status == 409 and "round 2" in not_open.detail
    bad_cause = _rejected(lambda: decline(fed.silos["b"], fed.run_id, 1, cause="boredom"))
    assert bad_cause.status == 422 and "cause" in bad_cause.detail
    other_run = _rejected(
        lambda: fed.silos["b"].submit_statement(
            fed.run_id,
            "decline",
            {**_payload("b", "0" * 32, 1), "reason": "x"},
        )
    )
    assert other_run.status == 422
    assert fed.run_id in other_run.detail and "0" * 32 in other_run.detail
    missing = _rejected(
        lambda: fed.silos["b"].submit_statement(
            fed.run_id, "decline", {"silo": "b", "run_id": fed.run_id, "round": 1}
        )
    )
    assert missing.status == 422 and "scope" in missing.detail
    # b declines once; a second, different decline of the same round is refused
    decline(fed.silos["b"], fed.run_id, 1)
    second = _rejected(lambda: decline(fed.silos["b"], fed.run_id, 1, reason="another reason"))
    assert second.status == 409 and "'b'" in second.detail
    assert sum(e.kind == "decline" for e in fed.coord.ledger(fed.run_id)) == 1
    assert fed.coord.close_round(fed.run_id, 1).status == "failed"  # only a answered
    closed = _rejected(lambda: decline(fed.silos["c"], fed.run_id, 1))
    assert closed.status == 409 and "round 1" in closed.detail and "failed" in closed.detail


def test_the_agent_learns_whether_the_service_holds_its_answer(plain: Fed) -> None:
    """`silos.decline.send` is True when the round is answered (taken now, or an earlier
    answer stands) and False when the round named is not the open one, so the agent takes
    that round up when it opens (after a hub restore, say) instead of skipping it."""
    fed = plain
    declined = Declined("round", "training", "one class only")
    ws = fed.workspace
    assert not silo_decline.send(fed.silos["a"], ws, fed.run_id, 2, declined)  # not open yet
    assert silo_decline.send(fed.silos["a"], ws, fed.run_id, 1, declined)  # taken
    _update(fed, "b", 1, np.zeros(DIM, np.float32))
    assert silo_decline.send(fed.silos["b"], ws, fed.run_id, 1, declined)  # its update stands
    kinds = {c.silo: c.state for c in fed.coord.wait_round(fed.run_id, 1, 0).silos}
    assert kinds["a"] == "declined" and kinds["b"] != "declined"
    assert sum(e.kind == "decline" for e in fed.coord.ledger(fed.run_id)) == 1


def _payload(silo: str, run_id: str, round_: int) -> dict[str, Any]:
    return {
        "silo": silo,
        "run_id": run_id,
        "round": round_,
        "scope": "round",
        "cause": "training",
    }


def test_a_silo_that_declines_the_run_is_not_awaited_later(sqlite_url: str, tmp_path: Path) -> None:
    with _federation(sqlite_url, tmp_path, secure=False) as fed:
        decline(fed.silos["c"], fed.run_id, 1, scope="run", cause="policy", reason="no consent")
        _update(fed, "a", 1, np.zeros(DIM, np.float32))
        _update(fed, "b", 1, np.zeros(DIM, np.float32))
        first = fed.coord.wait_round(fed.run_id, 1, wait_s=30)
        assert first.complete and _states(first)["c"] == "refused"
        assert fed.coord.close_round(fed.run_id, 1).status == "aggregated"

        fed.coord.open_round(fed.run_id, RoundOpen(round=2, deadline_s=DEADLINE_S))
        validate_all({n: fed.silos[n] for n in ("a", "b")}, fed.run_id, round_=2)
        second = fed.coord.wait_round(fed.run_id, 2, 0)
        assert second.awaited == ["a", "b"] and _states(second)["c"] == "refused"
        task = fed.silos["c"].next_task(wait_s=0, run_id=fed.run_id)
        assert task is not None and task.type == "run_ended"
        _update(fed, "a", 2, np.zeros(DIM, np.float32))
        _update(fed, "b", 2, np.zeros(DIM, np.float32))
        done = fed.coord.wait_round(fed.run_id, 2, wait_s=30)
        assert done.complete and done.awaited == []
        late = _rejected(lambda: decline(fed.silos["c"], fed.run_id, 2))
        assert late.status == 409 and "left run" in late.detail


def _task(client: SiloClient, expected: str) -> Any:
    task = client.next_task(wait_s=2)
    assert task is not None and task.type == expected, task
    return task


def test_secure_round_awaits_per_stage_and_completes_without_a_decliner(
    sqlite_url: str, tmp_path: Path
) -> None:
    with _federation(sqlite_url, tmp_path, secure=True) as fed:
        rng = np.random.default_rng(7)
        deltas = {n: rng.normal(scale=0.3, size=DIM) for n in WEIGHTS}
        ws = fed.workspace
        a = fed.silos["a"]
        secure_round.advertise(a, a.key, _task(a, "secagg_advertise"), ws / "a", n_examples=10)
        out = fed.coord.wait_round(fed.run_id, 1, 0)
        assert (out.stage, out.awaited) == ("advertise", ["b", "c"])
        # every silo is still "waiting" for an update: that is not who the stage awaits
        assert all(s.state == "waiting" for s in out.silos)
        for name in ("b", "c"):
            client = fed.silos[name]
            task = _task(client, "secagg_advertise")
            secure_round.advertise(client, client.key, task, ws / name, n_examples=WEIGHTS[name])
        out = fed.coord.wait_round(fed.run_id, 1, 0)
        assert (out.stage, out.awaited) == ("share", ["a", "b", "c"])
        for name, client in fed.silos.items():
            secure_round.share(client, client.key, _task(client, "secagg_share"), ws / name)
        out = fed.coord.wait_round(fed.run_id, 1, 0)
        assert (out.stage, out.awaited) == ("masked", ["a", "b", "c"])

        decline(fed.silos["c"], fed.run_id, 1, cause="training", reason="loss is NaN")
        out = fed.coord.wait_round(fed.run_id, 1, 0)
        assert (out.stage, out.awaited) == ("masked", ["a", "b"])
        assert _states(out)["c"] == "declined"
        for name in ("a", "b"):
            client = fed.silos[name]
            task = _task(client, "secagg_masked")
            assert task.secagg.weight is not None
            vector = task.secagg.weight * deltas[name]
            message = secure_round.masked_update(client, client.key, task, ws / name, vector)
            client.submit_masked(fed.run_id, 1, message, WEIGHTS[name], 0.01, METRICS)
        out = fed.coord.wait_round(fed.run_id, 1, 0)
        assert (out.stage, out.awaited) == ("unmask", ["a", "b"])
        for name in ("a", "b"):
            client = fed.silos[name]
            secure_round.unmask(client, client.key, _task(client, "secagg_unmask"), ws / name)
        out = fed.coord.wait_round(fed.run_id, 1, wait_s=5)
        assert out.status == "aggregated" and out.awaited == [], out
        # the exact aggregate of the two that answered, as the plain weighted mean would be
        mean = (10 * deltas["a"] + 30 * deltas["b"]) / 40
        np.testing.assert_allclose(_model(fed, 1), fed.initial + mean, atol=1e-6)
        kinds = [e.kind for e in fed.coord.ledger(fed.run_id)]
        assert kinds.count("decline") == 1 and "recovery" in kinds
