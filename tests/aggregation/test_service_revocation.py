"""Revoking a silo through the real service over HTTP: the signed ledger records it (one
federation entry, one per run in progress it leaves), a second revocation writes nothing, and
the runs it took part in stop waiting for it: the open round, plain or secure, moves on as soon
as the others answered instead of at its deadline."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from support.live_service import coordinator, enrolled_silo, service_in_thread
from support.validation import validate_all

from aggregation.service import revocation
from aggregation.service.lineage import Recorder
from flows.service_client import CoordinatorClient
from schemas import tensors
from schemas.ledger_verify import verify_chain
from schemas.specs import ModelSpec, RunSpec, SecureAggregationSpec, param_shapes
from schemas.wire import Metrics, RoundOpen, RoundOut, RunCreate, SiloOut
from silos import secure_round
from silos.client import SiloClient
from silos.client_errors import ServiceRejected

MODEL = ModelSpec(kind="logreg", n_features=3)
SHAPES = param_shapes(MODEL)
DIM = sum(int(np.prod(s)) for _, s in SHAPES)
DEADLINE_S = 600.0  # far beyond every test: a round that moves on did not wait for it
PROMPT_S = 60.0  # what "at once" may take on a slow machine: a tenth of the deadline
METRICS = Metrics(n_test=10, loss=0.5, accuracy=0.8, auc=0.9).model_dump_json()
WEIGHTS = {"a": 10, "b": 30, "c": 60}
REASON = "data-sharing agreement ended"


@dataclass
class Fed:
    url: str
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


def _start(coord: CoordinatorClient, silos: dict[str, SiloClient], secure: bool) -> str:
    spec = RunSpec(
        federation="f",
        dataset="toy",
        model=MODEL,
        rounds=3,
        min_silos=2,
        secure_aggregation=SecureAggregationSpec(enabled=secure, clip=5.0, threshold=2),
    )
    run = coord.create_run(RunCreate(spec=spec))
    initial = np.random.default_rng(0).normal(size=DIM).astype(np.float32)
    coord.put_initial_model(run.run_id, tensors.encode(_arrays(initial)))
    coord.start_run(run.run_id)
    coord.open_round(run.run_id, RoundOpen(round=1, deadline_s=DEADLINE_S))
    validate_all(silos, run.run_id)
    return run.run_id


@contextmanager
def _federation(db_url: str, tmp_path: Path, *, secure: bool) -> Iterator[Fed]:
    with service_in_thread(tmp_path / "svc", db_url) as url:
        coord = coordinator(url)
        coord.create_federation("f")
        silos = {n: enrolled_silo(url, coord, "f", n) for n in WEIGHTS}
        run_id = _start(coord, silos, secure)
        initial = _model(coord, run_id, 0)
        yield Fed(url, coord, silos, run_id, initial, tmp_path / "silo-ws")


def _revoke(coord: CoordinatorClient, silo: str, reason: str | None = None) -> SiloOut:
    """POST .../revoke, with a reason in the body when one is given (without: no body)."""
    return coord.revoke("f", silo, reason)


def _update(fed: Fed, name: str, round_: int, delta: np.ndarray) -> None:
    meta = {"run_id": fed.run_id, "round": str(round_), "n_examples": str(WEIGHTS[name])}
    fed.silos[name].submit_update(fed.run_id, round_, tensors.encode(_arrays(delta), meta))


def _model(coord: CoordinatorClient, run_id: str, version: int) -> np.ndarray:
    payload = coord.download_model(run_id, version)
    return np.concatenate([a.ravel() for a in tensors.decode_expected(payload, SHAPES)[0]])


def _states(out: RoundOut) -> dict[str, str]:
    return {s.silo: s.state for s in out.silos}


def _revoked(coord: CoordinatorClient) -> list[Any]:
    return [e for e in coord.ledger() if e.kind == "silo_revoked"]


def _verified(fed: Fed) -> None:
    keys = {
        k: Ed25519PublicKey.from_public_bytes(bytes.fromhex(v))
        for k, v in fed.coord.ledger_keys().items()
    }
    report = verify_chain(fed.coord.ledger(), keys)
    assert report.ok, report


def _until(what: str, check: Any, within: float = PROMPT_S) -> Any:
    """Poll `check` until it returns something truthy (the round's progress, say)."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        time.sleep(0.05)
    raise AssertionError(f"{what} did not happen within {within} s")


def test_revoking_a_participant_is_in_the_ledger_once_and_unblocks_the_round(
    db_url: str, tmp_path: Path
) -> None:
    with _federation(db_url, tmp_path, secure=False) as fed:
        rng = np.random.default_rng(1)
        deltas = {n: rng.normal(scale=0.1, size=DIM).astype(np.float32) for n in WEIGHTS}
        started = time.monotonic()
        _update(fed, "a", 1, deltas["a"])
        _update(fed, "b", 1, deltas["b"])
        before = fed.coord.wait_round(fed.run_id, 1, 0)
        assert not before.complete and before.awaited == ["c"]

        out = _revoke(fed.coord, "c", REASON)
        assert out.status == "revoked"
        # the coordinator's wait returns at once: nobody is awaited any more
        now = fed.coord.wait_round(fed.run_id, 1, wait_s=PROMPT_S)
        assert now.complete and now.awaited == [] and now.status == "open"
        c_state = next(s for s in now.silos if s.silo == "c")
        assert c_state.state == "refused" and REASON in (c_state.reason or "")
        closed = fed.coord.close_round(fed.run_id, 1)
        assert closed.status == "aggregated", closed
        assert time.monotonic() - started < PROMPT_S
        mean = (10 * deltas["a"] + 30 * deltas["b"]) / 40
        np.testing.assert_allclose(_model(fed.coord, fed.run_id, 1), fed.initial + mean, atol=1e-6)

        key = fed.silos["c"].key.public_key().public_bytes_raw().hex()
        entries = _revoked(fed.coord)
        assert [(e.run_id, e.author) for e in entries] == [
            (None, "service"),
            (fed.run_id, "service"),
        ]
        base = {"silo": "c", "federation": "f", "public_key": key, "reason": REASON}
        assert json.loads(entries[0].payload) == {**base, "runs": [fed.run_id]}
        assert json.loads(entries[1].payload) == {**base, "round": 1}
        assert entries[1] in fed.coord.ledger(fed.run_id)

        # revoking again (with or without a reason) changes nothing and writes nothing
        height = len(fed.coord.ledger())
        assert _revoke(fed.coord, "c").status == "revoked"
        assert _revoke(fed.coord, "c", "another reason").status == "revoked"
        assert len(fed.coord.ledger()) == height
        assert len(_revoked(fed.coord)) == 2
        _verified(fed)

        # later rounds never wait for it; the revoked silo itself is refused
        fed.coord.open_round(fed.run_id, RoundOpen(round=2, deadline_s=DEADLINE_S))
        validate_all({n: fed.silos[n] for n in ("a", "b")}, fed.run_id, round_=2)
        second = fed.coord.wait_round(fed.run_id, 2, 0)
        assert second.awaited == ["a", "b"] and _states(second)["c"] == "refused"
        _update(fed, "a", 2, deltas["a"])
        _update(fed, "b", 2, deltas["b"])
        done = fed.coord.wait_round(fed.run_id, 2, wait_s=PROMPT_S)
        assert done.complete and done.awaited == []
        with pytest.raises(ServiceRejected) as err:
            fed.silos["c"].next_task(wait_s=0, run_id=fed.run_id)
        assert err.value.status == 403 and "revoked" in err.value.detail


def test_a_revocation_outside_any_run_and_without_a_reason(sqlite_url: str, tmp_path: Path) -> None:
    with service_in_thread(tmp_path / "svc", sqlite_url) as url:
        coord = coordinator(url)
        coord.create_federation("f")
        coord.create_federation("g")
        d = enrolled_silo(url, coord, "f", "d")
        enrolled_silo(url, coord, "g", "d")  # the same name and key in another federation
        with pytest.raises(ServiceRejected) as err:
            coord.revoke("f", "nobody")
        assert err.value.status == 404
        assert _revoked(coord) == []

        assert coord.revoke("f", "d").status == "revoked"  # no body: as before, no reason
        [entry] = _revoked(coord)
        assert entry.run_id is None and entry.author == "service"
        assert json.loads(entry.payload) == {
            "silo": "d",
            "federation": "f",
            "public_key": d.key.public_key().public_bytes_raw().hex(),
            "reason": None,
            "runs": [],
        }
        assert {s.name: s.status for s in coord.silos("g")} == {"d": "approved"}
        with pytest.raises(ServiceRejected) as err:
            coord.approve("f", "d")
        assert err.value.status == 409
        assert len(_revoked(coord)) == 1


def test_a_revoked_silo_leaves_every_run_in_progress_locks_taken_in_order(
    sqlite_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two running runs: each gets its entry and stops waiting; every run and round lock is
    taken (run before round, runs in id order) before the first ledger entry."""
    with service_in_thread(tmp_path / "svc", sqlite_url) as url:
        coord = coordinator(url)
        coord.create_federation("f")
        silos = {n: enrolled_silo(url, coord, "f", n) for n in WEIGHTS}
        runs = sorted(_start(coord, silos, secure=False) for _ in range(2))
        for run_id in runs:
            for name in ("a", "b"):
                meta = {"run_id": run_id, "round": "1", "n_examples": str(WEIGHTS[name])}
                payload = tensors.encode(_arrays(np.zeros(DIM, np.float32)), meta)
                silos[name].submit_update(run_id, 1, payload)

        events: list[str] = []
        get_run, get_round, service = revocation.get_run, revocation.get_round, Recorder.service

        def run_lock(s: Any, run_id: str, *, for_update: bool = False) -> Any:
            events.append(f"run {run_id} {for_update}")
            return get_run(s, run_id, for_update=for_update)

        def round_lock(s: Any, run_id: str, number: int, *, for_update: bool = False) -> Any:
            events.append(f"round {run_id} {for_update}")
            return get_round(s, run_id, number, for_update=for_update)

        def append(self: Recorder, s: Any, kind: str, payload: Any, run_id: Any) -> Any:
            events.append(f"ledger {kind}")
            return service(self, s, kind, payload, run_id)

        monkeypatch.setattr(revocation, "get_run", run_lock)
        monkeypatch.setattr(revocation, "get_round", round_lock)
        monkeypatch.setattr(Recorder, "service", append)
        _revoke(coord, "c", REASON)
        monkeypatch.undo()

        first_entry = events.index("ledger silo_revoked")
        assert events[:first_entry] == [
            f"run {runs[0]} True",
            f"round {runs[0]} True",
            f"run {runs[1]} True",
            f"round {runs[1]} True",
        ]
        entries = _revoked(coord)
        assert json.loads(entries[0].payload)["runs"] == runs
        assert [e.run_id for e in entries[1:]] == runs
        for run_id in runs:
            out = coord.wait_round(run_id, 1, wait_s=PROMPT_S)
            assert out.complete and out.awaited == []
            assert coord.close_round(run_id, 1).status == "aggregated"


# ---------------------------------------------------------------------------- secure rounds


def _task(client: SiloClient, expected: str) -> Any:
    task = client.next_task(wait_s=2)
    assert task is not None and task.type == expected, task
    return task


def _advertise(fed: Fed, names: tuple[str, ...]) -> None:
    for name in names:
        client = fed.silos[name]
        task = _task(client, "secagg_advertise")
        ws = fed.workspace / name
        secure_round.advertise(client, client.key, task, ws, n_examples=WEIGHTS[name])


def _share(fed: Fed, names: tuple[str, ...]) -> None:
    for name in names:
        client = fed.silos[name]
        secure_round.share(client, client.key, _task(client, "secagg_share"), fed.workspace / name)


def _masked(fed: Fed, names: tuple[str, ...], deltas: dict[str, np.ndarray]) -> None:
    for name in names:
        client = fed.silos[name]
        task = _task(client, "secagg_masked")
        vector = task.secagg.weight * deltas[name]
        message = secure_round.masked_update(client, client.key, task, fed.workspace / name, vector)
        client.submit_masked(fed.run_id, 1, message, WEIGHTS[name], 0.01, METRICS)


def _unmask(fed: Fed, names: tuple[str, ...]) -> None:
    for name in names:
        client = fed.silos[name]
        task = _task(client, "secagg_unmask")
        secure_round.unmask(client, client.key, task, fed.workspace / name)


def _aggregated(fed: Fed) -> RoundOut:
    def check() -> RoundOut | None:
        out = fed.coord.wait_round(fed.run_id, 1, wait_s=1)
        return out if out.status != "open" else None

    out = _until("round 1 closing", check)
    assert out.status == "aggregated", out
    return out


def _weighted(deltas: dict[str, np.ndarray], names: tuple[str, ...]) -> np.ndarray:
    total = sum(WEIGHTS[n] for n in names)
    return sum(WEIGHTS[n] * deltas[n] for n in names) / total  # type: ignore[return-value]


@pytest.mark.parametrize("stage", ["advertise", "masked"])
def test_secure_round_goes_on_without_a_silo_revoked_before_its_masked_update(
    sqlite_url: str, tmp_path: Path, stage: str
) -> None:
    """Revoked before it advertised: as if it never joined; after key sharing: a dropout
    whose masks the others recover. Either way the round aggregates a and b at once."""
    with _federation(sqlite_url, tmp_path, secure=True) as fed:
        started = time.monotonic()
        rng = np.random.default_rng(7)
        deltas = {n: rng.normal(scale=0.3, size=DIM) for n in WEIGHTS}
        if stage == "masked":
            _advertise(fed, ("a", "b", "c"))
            _share(fed, ("a", "b", "c"))
            assert fed.coord.wait_round(fed.run_id, 1, 0).stage == "masked"
        _revoke(fed.coord, "c", REASON)
        out = fed.coord.wait_round(fed.run_id, 1, 0)
        assert (out.stage, out.awaited) == (stage, ["a", "b"])
        assert _states(out)["c"] == "refused"
        if stage == "advertise":
            _advertise(fed, ("a", "b"))
            _share(fed, ("a", "b"))
        _masked(fed, ("a", "b"), deltas)
        out = fed.coord.wait_round(fed.run_id, 1, 0)
        assert (out.stage, out.awaited) == ("unmask", ["a", "b"])
        _unmask(fed, ("a", "b"))
        _aggregated(fed)
        assert time.monotonic() - started < PROMPT_S
        expected = fed.initial + _weighted(deltas, ("a", "b"))
        np.testing.assert_allclose(_model(fed.coord, fed.run_id, 1), expected, atol=1e-6)
        kinds = [e.kind for e in fed.coord.ledger(fed.run_id)]
        assert kinds.count("silo_revoked") == 1 and "aggregate" in kinds
        assert kinds.index("silo_revoked") < kinds.index("aggregate")
        if stage == "masked":
            assert "recovery" in kinds
        _verified(fed)


def test_secure_round_unmasks_at_once_when_only_the_revoked_survivor_is_awaited(
    sqlite_url: str, tmp_path: Path
) -> None:
    """c sent its masked update while approved, so it is in the sum; revoked when the unmask
    stage waits for it alone, the others' shares unmask the round at once."""
    with _federation(sqlite_url, tmp_path, secure=True) as fed:
        started = time.monotonic()
        rng = np.random.default_rng(11)
        deltas = {n: rng.normal(scale=0.3, size=DIM) for n in WEIGHTS}
        everyone = ("a", "b", "c")
        _advertise(fed, everyone)
        _share(fed, everyone)
        _masked(fed, everyone, deltas)
        _unmask(fed, ("a", "b"))
        out = fed.coord.wait_round(fed.run_id, 1, 0)
        assert (out.status, out.stage, out.awaited) == ("open", "unmask", ["c"])
        _revoke(fed.coord, "c", REASON)
        _aggregated(fed)
        assert time.monotonic() - started < PROMPT_S
        expected = fed.initial + _weighted(deltas, everyone)
        np.testing.assert_allclose(_model(fed.coord, fed.run_id, 1), expected, atol=1e-6)
        [entry] = [e for e in fed.coord.ledger(fed.run_id) if e.kind == "silo_revoked"]
        assert json.loads(entry.payload)["round"] == 1
        _verified(fed)


def test_secure_round_does_not_wait_for_a_survivor_revoked_before_the_others_unmask(
    sqlite_url: str, tmp_path: Path
) -> None:
    """c sent its masked update, then was revoked while a and b still owed their unmask
    messages: once they sent them, the round unmasks (c's input in the sum) without waiting
    for c until the deadline."""
    with _federation(sqlite_url, tmp_path, secure=True) as fed:
        started = time.monotonic()
        rng = np.random.default_rng(12)
        deltas = {n: rng.normal(scale=0.3, size=DIM) for n in WEIGHTS}
        everyone = ("a", "b", "c")
        _advertise(fed, everyone)
        _share(fed, everyone)
        _masked(fed, everyone, deltas)
        out = fed.coord.wait_round(fed.run_id, 1, 0)
        assert out.stage == "unmask" and sorted(out.awaited) == ["a", "b", "c"]
        _revoke(fed.coord, "c", REASON)
        assert sorted(fed.coord.wait_round(fed.run_id, 1, 0).awaited) == ["a", "b"]
        _unmask(fed, ("a", "b"))
        _aggregated(fed)
        assert time.monotonic() - started < PROMPT_S
        expected = fed.initial + _weighted(deltas, everyone)
        np.testing.assert_allclose(_model(fed.coord, fed.run_id, 1), expected, atol=1e-6)
        _verified(fed)


def test_the_cli_sends_the_reason_into_the_ledger(sqlite_url: str, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from flows.cli import app

    with service_in_thread(tmp_path / "svc", sqlite_url) as url:
        coord = coordinator(url)
        coord.create_federation("f")
        enrolled_silo(url, coord, "f", "e")
        base = ["silo", "revoke", "e", "--federation", "f", "--service-url", url]
        base += ["--token", "test-admin-token"]
        empty = CliRunner().invoke(app, [*base, "--reason", ""])
        assert empty.exit_code == 2 and "--reason" in empty.output and _revoked(coord) == []
        done = CliRunner().invoke(app, [*base, "--reason", REASON])
        assert done.exit_code == 0, done.output
        assert "silo e in f: revoked" in done.output
        [entry] = _revoked(coord)
        assert json.loads(entry.payload)["reason"] == REASON
