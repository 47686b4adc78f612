"""Secure aggregation through the real service over HTTP: silos drive the protocol with the
silo agent's own functions (`silos.secure_round`); the service sees only masked vectors."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from support.live_service import (
    coordinator,
    enrolled_silo,
    publish_shipped_contract,
    service_in_thread,
)
from support.validation import validate_all

from aggregation.secagg import server as _server
from aggregation.service import secure_rounds as _secure_rounds
from flows.service_client import CoordinatorClient
from schemas import tensors
from schemas.specs import ModelSpec, RunSpec, SecureAggregationSpec, param_shapes
from schemas.wire import Metrics, RoundOpen, RunCreate
from silos import secure_round
from silos.client import SiloClient
from silos.client_errors import ServiceRejected
from silos.secagg import client as secagg_client

_REBUILD = _secure_rounds.rebuild  # before the autouse fixture wraps it

MODEL = ModelSpec(kind="logreg", n_features=4)
SHAPES = param_shapes(MODEL)
DIM = sum(int(np.prod(s)) for _, s in SHAPES)
METRICS = Metrics(n_test=10, loss=0.5, accuracy=0.8, auc=0.9).model_dump_json()


@dataclass
class Fed:
    coord: CoordinatorClient
    silos: dict[str, SiloClient]
    run_id: str
    initial: np.ndarray
    workspace: Path


@contextmanager
def _federation(
    db_url: str,
    tmp_path: Path,
    consistency: bool | None = None,
    degree: int | None = None,
    names: tuple[str, ...] = ("a", "b", "c"),
) -> Iterator[Fed]:
    spec = RunSpec(
        federation="f",
        dataset="toy",
        model=MODEL,
        rounds=2,
        min_silos=2,
        secure_aggregation=SecureAggregationSpec(
            clip=5.0, threshold=2, consistency_check=consistency, degree=degree
        ),
    )
    with service_in_thread(tmp_path / "svc", db_url) as url:
        coord = coordinator(url)
        coord.create_federation("f")
        silos = {n: enrolled_silo(url, coord, "f", n) for n in names}
        run = coord.create_run(RunCreate(spec=spec))
        initial = np.random.default_rng(0).normal(size=DIM).astype(np.float32)
        arrays, start = {}, 0
        for name, shape in SHAPES:
            size = int(np.prod(shape))
            arrays[name] = initial[start : start + size].reshape(shape)
            start += size
        coord.put_initial_model(run.run_id, tensors.encode(arrays))
        coord.start_run(run.run_id)
        coord.open_round(run.run_id, RoundOpen(round=1, deadline_s=60))
        validate_all(silos, run.run_id)
        yield Fed(coord, silos, run.run_id, initial, tmp_path / "silo-ws")


@pytest.fixture(autouse=True)
def awaits_agrees_with_waiting_for(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Every task poll in these tests (dropouts, consistency checks, refusals) also computes
    the round-wide set the coordinator sees, and every silo's weight from all the adverts;
    every stage-close check also computes that set: the answers they use must agree."""
    from aggregation.service import secure_rounds

    real = secure_rounds.awaits
    asked: list[str] = []
    disagreements: list[tuple[int, str, str, bool]] = []

    def both(s, rnd, stage: str, silo: str) -> bool:  # type: ignore[no-untyped-def]
        got = real(s, rnd, stage, silo)
        asked.append(stage)
        if got != (silo in secure_rounds.waiting_for(s, rnd, stage)):
            disagreements.append((rnd.number, stage, silo, got))
        return got

    real_complete = secure_rounds.stage_complete

    def complete_alike(s, rnd, stage: str) -> bool:  # type: ignore[no-untyped-def]
        got = real_complete(s, rnd, stage)
        if got != (not secure_rounds.waiting_for(s, rnd, stage)):
            disagreements.append((rnd.number, f"{stage} complete", "", got))
        return got

    real_weight = secure_rounds.weight_of

    def same_weight(s, rnd, spec, silo: str) -> float | None:  # type: ignore[no-untyped-def]
        got = real_weight(s, rnd, spec, silo)  # exactly: the silo masks its update times it
        if got != secure_rounds.weights_of(s, rnd, spec).get(silo):
            disagreements.append((rnd.number, "weight", silo, False))
        return got

    real_rebuild = secure_rounds.rebuild

    def replayed_alike(s, run, rnd, spec, at=None, *, vectors=False):  # type: ignore[no-untyped-def]
        """The incremental replay (from this process's last one) against a replay of the whole
        mailbox, at every request."""
        got = real_rebuild(s, run, rnd, spec, at, vectors=vectors)
        if not vectors:
            with secure_rounds._replayed_lock:
                secure_rounds._REPLAYED.pop((rnd.run_id, rnd.number, at), None)
            whole = real_rebuild(s, run, rnd, spec, at)
            if _state_view(got) != _state_view(whole):
                disagreements.append((rnd.number, f"replay at {at}", "", False))
        return got

    monkeypatch.setattr(secure_rounds, "awaits", both)
    monkeypatch.setattr(secure_rounds, "stage_complete", complete_alike)
    monkeypatch.setattr(secure_rounds, "weight_of", same_weight)
    monkeypatch.setattr(secure_rounds, "rebuild", replayed_alike)
    yield asked
    assert not disagreements


def _state_view(state) -> dict[str, object]:  # type: ignore[no-untyped-def]
    """What a replayed server state decides with: who sent what at which stage."""
    return {
        "stage": state.stage,
        "adverts": {k: m.to_bytes() for k, m in state.adverts.items()},
        "shares": {k: m.to_bytes() for k, m in state.shares.items()},
        "submitted": sorted(state.submitted),
        "survivors": state.survivors,
        "dropped": state.dropped,
        "consistency": dict(state.consistency),
        "responses": {k: m.to_bytes() for k, m in state.responses.items()},
        "total": None if state.total is None else (state.total.shape, state.partial_total),
    }


@pytest.fixture
def fed(db_url: str, tmp_path: Path) -> Iterator[Fed]:
    with _federation(db_url, tmp_path) as federation:
        yield federation


def _task(client: SiloClient, expected: str):  # type: ignore[no-untyped-def]
    task = client.next_task(wait_s=2)
    assert task is not None and task.type == expected, task
    return task


def _advertise_and_share(fed: Fed, *, share: bool = True) -> None:
    """Every silo advertises its keys (5 examples each), then, with `share`, shares them."""
    for name, client in fed.silos.items():
        task = _task(client, "secagg_advertise")
        secure_round.advertise(client, client.key, task, fed.workspace / name, n_examples=5)
    for name, client in fed.silos.items() if share else ():
        task = _task(client, "secagg_share")
        secure_round.share(client, client.key, task, fed.workspace / name)


def _run_until_masked(
    fed: Fed, deltas: dict[str, np.ndarray], n: dict[str, int], skip_masked: tuple[str, ...] = ()
) -> None:
    for name, client in fed.silos.items():
        secure_round.advertise(
            client,
            client.key,
            _task(client, "secagg_advertise"),
            fed.workspace / name,
            n_examples=n[name],
        )
    for name, client in fed.silos.items():
        secure_round.share(client, client.key, _task(client, "secagg_share"), fed.workspace / name)
    for name, client in fed.silos.items():
        if name in skip_masked:
            continue
        task = _task(client, "secagg_masked")
        assert task.secagg is not None and task.secagg.weight is not None
        message = secure_round.masked_update(
            client, client.key, task, fed.workspace / name, task.secagg.weight * deltas[name]
        )
        answer = client.submit_masked(fed.run_id, 1, message, n[name], 0.01, METRICS)
        assert answer["receipt"] is not None


def _unmask_all(fed: Fed, names) -> None:  # type: ignore[no-untyped-def]
    for name in names:
        client = fed.silos[name]
        secure_round.unmask(
            client, client.key, _task(client, "secagg_unmask"), fed.workspace / name
        )


def _new_model(fed: Fed) -> np.ndarray:
    payload = fed.coord.download_model(fed.run_id, 1)
    return np.concatenate([a.ravel() for a in tensors.decode_expected(payload, SHAPES)[0]])


def _deltas(seed: int = 1) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {name: rng.normal(scale=0.3, size=DIM) for name in ("a", "b", "c")}


def test_secure_round_equals_weighted_fedavg(fed: Fed) -> None:
    deltas, n = _deltas(), {"a": 10, "b": 30, "c": 60}
    _run_until_masked(fed, deltas, n)
    _unmask_all(fed, ["a", "b", "c"])
    out = fed.coord.wait_round(fed.run_id, 1, wait_s=5)
    assert out.status == "aggregated", out
    expected = fed.initial + sum(n[k] * deltas[k] for k in n) / sum(n.values())
    np.testing.assert_allclose(_new_model(fed), expected, atol=1e-6)
    entries = fed.coord.ledger(fed.run_id)
    aggregate = next(e for e in entries if e.kind == "aggregate")
    assert '"secure_aggregation":true' in aggregate.payload
    assert '"individual_updates_seen_by_service":false' in aggregate.payload


def test_a_degree_the_roster_cannot_fill_runs_the_complete_graph(
    db_url: str, tmp_path: Path
) -> None:
    """SecAgg+ with degree 2 among 3 silos (a ring needs more than degree + 1) used to fail
    every task poll of the round with a protocol error; it is the complete graph."""
    with _federation(db_url, tmp_path, degree=2) as fed:
        task = fed.silos["a"].next_task(wait_s=2)
        assert task is not None and task.secagg is not None and task.secagg.degree is None
        deltas, n = _deltas(), {"a": 10, "b": 30, "c": 60}
        _run_until_masked(fed, deltas, n)
        _unmask_all(fed, ["a", "b", "c"])
        assert fed.coord.wait_round(fed.run_id, 1, wait_s=5).status == "aggregated"
        expected = fed.initial + sum(n[k] * deltas[k] for k in n) / sum(n.values())
        np.testing.assert_allclose(_new_model(fed), expected, atol=1e-6)


def test_secagg_plus_is_exact_and_each_silo_gets_only_its_neighbourhood(
    db_url: str, tmp_path: Path
) -> None:
    """Five silos on a ring of degree 2, with the consistency check: the sum is the weighted
    FedAvg, and a silo's tasks, adverts and unmask request carry the keys, adverts and
    consistency signatures of itself and its two neighbours only (O(degree), not O(N))."""
    from schemas.secagg.messages import AdvertiseKeys, UnmaskRequest

    names = ("a", "b", "c", "d", "e")
    with _federation(db_url, tmp_path, consistency=True, degree=2, names=names) as fed:
        rng = np.random.default_rng(5)
        deltas = {name: rng.normal(scale=0.3, size=DIM) for name in names}
        n = {name: 10 * (i + 1) for i, name in enumerate(names)}
        mine: dict[str, set[str]] = {}
        for name, client in fed.silos.items():
            task = _task(client, "secagg_advertise")
            cfg = secure_round.round_config(task)
            assert cfg.degree == 2
            mine[name] = set(cfg.neighbours[name]) | {name}
            assert len(mine[name]) == 3 and set(task.secagg.roster_keys) == mine[name]
            secure_round.advertise(client, client.key, task, fed.workspace / name, n[name])
        for name, client in fed.silos.items():
            adverts = client.secagg_get(fed.run_id, 1, "adverts")
            assert {AdvertiseKeys.from_bytes(m).silo for m in adverts} == mine[name]
            secure_round.share(
                client, client.key, _task(client, "secagg_share"), fed.workspace / name
            )
        for name, client in fed.silos.items():
            task = _task(client, "secagg_masked")
            assert task.secagg is not None and task.secagg.weight is not None
            message = secure_round.masked_update(
                client, client.key, task, fed.workspace / name, task.secagg.weight * deltas[name]
            )
            client.submit_masked(fed.run_id, 1, message, n[name], 0.01, METRICS)
        _sign_survivors(fed, names)
        for name, client in fed.silos.items():
            task = _task(client, "secagg_unmask")
            (raw,) = client.secagg_get(fed.run_id, 1, "unmask-request")
            assert set(UnmaskRequest.from_bytes(raw).consistency) == mine[name]
            secure_round.unmask(client, client.key, task, fed.workspace / name)
        assert fed.coord.wait_round(fed.run_id, 1, wait_s=5).status == "aggregated"
        expected = fed.initial + sum(n[k] * deltas[k] for k in n) / sum(n.values())
        np.testing.assert_allclose(_new_model(fed), expected, atol=1e-6)


def test_silo_dropped_after_sharing_keys_is_recovered(fed: Fed) -> None:
    deltas, n = _deltas(2), {"a": 10, "b": 30, "c": 60}
    _run_until_masked(fed, deltas, n, skip_masked=("c",))
    assert fed.coord.wait_round(fed.run_id, 1, 0).status == "open"
    fed.coord.close_round(fed.run_id, 1)  # the deadline passed: c is a dropout
    assert fed.silos["c"].next_task(wait_s=0) is None  # a dropout is not asked to unmask
    _unmask_all(fed, ["a", "b"])
    out = fed.coord.wait_round(fed.run_id, 1, wait_s=5)
    assert out.status == "aggregated", out
    expected = fed.initial + (10 * deltas["a"] + 30 * deltas["b"]) / 40
    np.testing.assert_allclose(_new_model(fed), expected, atol=1e-6)
    kinds = [e.kind for e in fed.coord.ledger(fed.run_id)]
    assert "dropout" in kinds and "recovery" in kinds


def test_too_few_survivors_fail_the_round_saying_how_many(fed: Fed) -> None:
    deltas, n = _deltas(3), {"a": 10, "b": 30, "c": 60}
    _run_until_masked(fed, deltas, n, skip_masked=("b", "c"))
    out = fed.coord.close_round(fed.run_id, 1)
    assert out.status == "failed"
    assert "needed 2, got 1" in (out.reason or "")


def test_a_mask_key_unusable_at_unmask_fails_the_round_naming_the_silo(
    fed: Fed, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A survivor's stored s_pk that the dropout's recovered key cannot agree with (one
    stored before adverts were checked) used to 500 every unmask and the deadline close,
    leaving the round open for good."""
    real = _server.pair_seed
    monkeypatch.setattr(  # a's stored s_pk is a low-order point
        _server,
        "pair_seed",
        lambda k, pk, cfg, a, b: real(k, bytes(32) if b == "a" else pk, cfg, a, b),
    )
    _run_until_masked(fed, _deltas(4), {"a": 10, "b": 30, "c": 60}, skip_masked=("c",))
    fed.coord.close_round(fed.run_id, 1)  # c is a dropout: its pairwise masks are recovered
    _unmask_all(fed, ["a", "b"])
    out = fed.coord.wait_round(fed.run_id, 1, 0)
    assert out.status == "failed", out
    assert "round 1, stage unmask, silo a] its advertised s_pk is unusable" in (out.reason or "")


def test_bad_protocol_messages_are_refused(fed: Fed) -> None:
    a, b = fed.silos["a"], fed.silos["b"]
    task = _task(a, "secagg_advertise")
    secure_round.advertise(a, a.key, task, fed.workspace / "a", n_examples=5)
    raw = (fed.workspace / "a" / "secagg" / f"{fed.run_id}-r1.advertise.msg").read_bytes()
    with pytest.raises(ServiceRejected) as err:  # the same silo sends twice
        a.secagg_post(fed.run_id, 1, "advertise", raw, n_examples=5)
    assert err.value.status == 409 and "the first one stands" in err.value.detail
    with pytest.raises(ServiceRejected) as err:  # garbage instead of a protocol message
        a.secagg_post(fed.run_id, 1, "advertise", b"\x00" * 10, n_examples=5)
    assert err.value.status in (409, 422)
    with pytest.raises(ServiceRejected) as err:  # another silo replays a's signed advert
        b.secagg_post(fed.run_id, 1, "advertise", raw, n_examples=5)
    assert err.value.status == 422 and "bound to silo 'a'" in err.value.detail
    with pytest.raises(ServiceRejected) as err:  # a message for the wrong stage
        b.secagg_post(fed.run_id, 1, "share", raw)
    assert err.value.status == 409 and "out of turn" in err.value.detail
    b_task = _task(b, "secagg_advertise")  # b's signed count is 5; its request says 500
    keys = {k: bytes.fromhex(v) for k, v in b_task.secagg.roster_keys.items()}
    _, advert = secagg_client.advertise_keys(
        secure_round.round_config(b_task), "b", b.key, keys, n_examples=5
    )
    with pytest.raises(ServiceRejected) as err:
        b.secagg_post(fed.run_id, 1, "advertise", advert.to_bytes(), n_examples=500)
    assert err.value.status == 422 and "signs n_examples 5" in err.value.detail
    for name in ("b", "c"):
        client = fed.silos[name]
        secure_round.advertise(
            client,
            client.key,
            _task(client, "secagg_advertise"),
            fed.workspace / name,
            n_examples=5,
        )
    for name, client in fed.silos.items():
        secure_round.share(client, client.key, _task(client, "secagg_share"), fed.workspace / name)
    task = _task(a, "secagg_masked")
    short = secure_round.masked_update(a, a.key, task, fed.workspace / "a", np.zeros(DIM))
    from schemas.secagg.messages import MaskedInput

    msg = MaskedInput.from_bytes(short)
    wrong = MaskedInput.create(
        a.key, run_id=fed.run_id, round_num=1, silo="a", vector=msg.vector[:-1].copy()
    )
    with pytest.raises(ServiceRejected) as err:  # masked vector of the wrong length
        a.submit_masked(fed.run_id, 1, wrong.to_bytes(), 5, 0.01, METRICS)
    assert err.value.status == 422 and "expects" in err.value.detail
    assert fed.coord.wait_round(fed.run_id, 1, 0).silos[0].state == "waiting"


def test_statistics_round_sums_moments_without_revealing_any_silo(
    db_url: str, tmp_path: Path
) -> None:
    from schemas.contracts.loader import load_contract
    from schemas.contracts.stats import moments_length

    length = moments_length(load_contract("credit_default"))
    spec = RunSpec(
        federation="f",
        dataset="credit_default",
        model=MODEL,
        rounds=1,
        min_silos=2,
        federation_statistics=True,
    )
    rng = np.random.default_rng(4)
    moments = {n: rng.uniform(0, 5000, size=length).round(3) for n in ("a", "b", "c")}
    with service_in_thread(tmp_path / "svc", db_url) as url:
        coord = coordinator(url)
        coord.create_federation("f")
        publish_shipped_contract(coord, "f", "credit_default")  # the service reads it
        silos = {n: enrolled_silo(url, coord, "f", n) for n in moments}
        run = coord.create_run(RunCreate(spec=spec))
        arrays = {name: np.zeros(shape, np.float32) for name, shape in SHAPES}
        coord.put_initial_model(run.run_id, tensors.encode(arrays))
        coord.start_run(run.run_id)
        coord.open_round(run.run_id, RoundOpen(round=1, kind="statistics", deadline_s=60))
        validate_all(silos, run.run_id)
        ws = tmp_path / "silo-ws"
        for name, client in silos.items():
            secure_round.advertise(
                client, client.key, _task(client, "secagg_advertise"), ws / name, n_examples=100
            )
        for name, client in silos.items():
            secure_round.share(client, client.key, _task(client, "secagg_share"), ws / name)
        for name, client in silos.items():
            task = _task(client, "statistics")
            assert task.secagg is not None and task.secagg.dim == length and task.secagg.bits == 64
            message = secure_round.masked_update(client, client.key, task, ws / name, moments[name])
            client.submit_masked(run.run_id, 1, message, 100, 0.0, None)
        for name, client in silos.items():
            secure_round.unmask(client, client.key, _task(client, "secagg_unmask"), ws / name)
        assert coord.wait_round(run.run_id, 1, wait_s=5).status == "closed"
        coord.open_round(run.run_id, RoundOpen(round=2, kind="train", deadline_s=60))
        task = _task(silos["a"], "secagg_advertise")
        assert task.stats is not None
        np.testing.assert_allclose(task.stats, sum(moments.values()), rtol=0, atol=1e-4)


def test_forged_protocol_message_is_refused(fed: Fed) -> None:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from schemas.secagg.messages import AdvertiseKeys

    b = fed.silos["b"]
    _task(b, "secagg_advertise")
    forged = AdvertiseKeys.create(
        Ed25519PrivateKey.generate(),
        run_id=fed.run_id,
        round_num=1,
        silo="b",
        c_pk=b"\x01" * 32,
        s_pk=b"\x02" * 32,
    )
    with pytest.raises(ServiceRejected) as err:  # signed with a key that is not b's
        b.secagg_post(fed.run_id, 1, "advertise", forged.to_bytes(), n_examples=5)
    assert err.value.status == 422 and "signature" in err.value.detail.lower()
    assert "b" in {s for s in _waiting(fed)}


def _waiting(fed: Fed) -> set[str]:
    task = fed.silos["b"].next_task(wait_s=0)
    return {"b"} if task is not None and task.type == "secagg_advertise" else set()


@pytest.fixture
def fed_checked(db_url: str, tmp_path: Path) -> Iterator[Fed]:
    """A run that asks for the consistency check (development mode: off unless asked)."""
    with _federation(db_url, tmp_path, consistency=True) as federation:
        yield federation


def _sign_survivors(fed: Fed, names) -> list[str]:  # type: ignore[no-untyped-def]
    """Each silo in `names` signs the survivor list its consistency task announces."""
    announced = []
    for name in names:
        client = fed.silos[name]
        task = _task(client, "secagg_consistency")
        assert task.secagg.consistency_check
        announced = task.survivors
        secure_round.consistency(client, client.key, task, fed.workspace / name)
    return announced


def test_secure_round_with_consistency_check_equals_weighted_fedavg(fed_checked: Fed) -> None:
    fed = fed_checked
    deltas, n = _deltas(5), {"a": 10, "b": 30, "c": 60}
    _run_until_masked(fed, deltas, n)
    assert fed.coord.wait_round(fed.run_id, 1, 0).secagg_stage == "consistency"
    assert _sign_survivors(fed, ["a", "b", "c"]) == ["a", "b", "c"]
    _unmask_all(fed, ["a", "b", "c"])
    out = fed.coord.wait_round(fed.run_id, 1, wait_s=5)
    assert out.status == "aggregated", out
    expected = fed.initial + sum(n[k] * deltas[k] for k in n) / sum(n.values())
    np.testing.assert_allclose(_new_model(fed), expected, atol=1e-6)


def test_consistency_check_with_a_dropout_after_masked(
    fed_checked: Fed, awaits_agrees_with_waiting_for: list[str]
) -> None:
    """c sends its masked input, then vanishes: it neither signs nor unmasks. Its input still
    counts (its self-mask seed comes back from a's and b's shares)."""
    fed = fed_checked
    deltas, n = _deltas(6), {"a": 10, "b": 30, "c": 60}
    _run_until_masked(fed, deltas, n)
    _sign_survivors(fed, ["a", "b"])
    assert fed.coord.wait_round(fed.run_id, 1, 0).status == "open"
    fed.coord.close_round(fed.run_id, 1)  # the deadline passed: c never signed
    assert fed.coord.wait_round(fed.run_id, 1, 0).secagg_stage == "unmask"
    assert fed.silos["c"].next_task(wait_s=0) is None  # a silo that did not sign cannot unmask
    assert {"advertise", "share", "masked", "consistency", "unmask"} <= set(
        awaits_agrees_with_waiting_for
    )  # the per-silo answer was checked at every stage
    _unmask_all(fed, ["a", "b"])
    out = fed.coord.wait_round(fed.run_id, 1, wait_s=5)
    assert out.status == "aggregated", out
    expected = fed.initial + sum(n[k] * deltas[k] for k in n) / sum(n.values())
    np.testing.assert_allclose(_new_model(fed), expected, atol=1e-6)


def test_consistency_check_with_a_dropout_before_masked(fed_checked: Fed) -> None:
    fed = fed_checked
    deltas, n = _deltas(7), {"a": 10, "b": 30, "c": 60}
    _run_until_masked(fed, deltas, n, skip_masked=("c",))
    fed.coord.close_round(fed.run_id, 1)  # c dropped after sharing keys
    assert _sign_survivors(fed, ["a", "b"]) == ["a", "b"]
    _unmask_all(fed, ["a", "b"])
    out = fed.coord.wait_round(fed.run_id, 1, wait_s=5)
    assert out.status == "aggregated", out
    expected = fed.initial + (10 * deltas["a"] + 30 * deltas["b"]) / 40
    np.testing.assert_allclose(_new_model(fed), expected, atol=1e-6)


def test_too_few_signatures_fail_the_round_saying_how_many(fed_checked: Fed) -> None:
    fed = fed_checked
    _run_until_masked(fed, _deltas(8), {"a": 10, "b": 30, "c": 60})
    _sign_survivors(fed, ["a"])
    out = fed.coord.close_round(fed.run_id, 1)
    assert out.status == "failed"
    assert "signed the survivor list" in (out.reason or "") and "needed 2, got 1" in (
        out.reason or ""
    )


def test_a_second_survivor_list_is_refused(fed_checked: Fed) -> None:
    from schemas.secagg.messages import ConsistencySignature

    fed = fed_checked
    _run_until_masked(fed, _deltas(9), {"a": 10, "b": 30, "c": 60})
    a = fed.silos["a"]
    wrong = ConsistencySignature.create(
        a.key, run_id=fed.run_id, round_num=1, silo="a", survivors=("a", "b")
    )
    with pytest.raises(ServiceRejected) as err:  # signed a list that is not U3
        a.secagg_post(fed.run_id, 1, "consistency", wrong.to_bytes())
    assert err.value.status == 422 and "differs from U3" in err.value.detail


def test_each_silo_fetches_only_the_shares_addressed_to_it(db_url: str, tmp_path: Path) -> None:
    """Shares are stored one row per (sender, recipient) under a recipient index; a silo's
    fetch returns exactly the ciphertexts the others addressed to it, and a replayed share
    message adds no row."""
    from sqlalchemy import create_engine, inspect, select

    from aggregation.service.tables import SecAggShare
    from schemas.secagg.messages import EncryptedShare, ShareKeys

    with _federation(db_url, tmp_path) as fed:
        _advertise_and_share(fed)
        sent = {
            name: ShareKeys.from_bytes(
                (fed.workspace / name / "secagg" / f"{fed.run_id}-r1.share.msg").read_bytes()
            )
            for name in fed.silos
        }
        with pytest.raises(ServiceRejected) as err:  # a replayed share message
            fed.silos["b"].secagg_post(fed.run_id, 1, "share", sent["b"].to_bytes())
        assert err.value.status == 409
        for name, client in fed.silos.items():
            got = [EncryptedShare.from_bytes(m) for m in client.secagg_get(fed.run_id, 1, "shares")]
            others = sorted(set(fed.silos) - {name})
            assert [m.silo for m in got] == others
            assert all(m.recipient == name and m.run_id == fed.run_id for m in got)
            assert [m.ciphertext for m in got] == [sent[o].ciphertexts[name] for o in others]
        engine = create_engine(db_url)
        try:
            with engine.connect() as conn:
                rows = conn.execute(
                    select(SecAggShare.sender, SecAggShare.recipient).where(
                        SecAggShare.run_id == fed.run_id
                    )
                ).all()
            indexes = inspect(engine).get_indexes("secagg_shares")
        finally:
            engine.dispose()
        assert sorted(rows) == sorted((s, r) for s in fed.silos for r in fed.silos if s != r)
        assert any(i["column_names"] == ["run_id", "round", "recipient"] for i in indexes)


def test_a_share_message_wakes_no_silo_until_its_stage_closes(
    db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A share message (its mailbox row and its per-recipient share rows) changes no other
    silo's task, so it must wake only the coordinator's round waits: woken on every share,
    N waiting silos re-check their task N times a stage (O(N^2) polls, `bench/scale.py`).
    The message that closes the stage does wake everybody."""
    from aggregation.service import wakeup

    topics: list[str] = []
    real_wake = wakeup.Wakeup.wake

    def recording(self: wakeup.Wakeup, topic: str) -> None:
        topics.append(topic)
        real_wake(self, topic)

    monkeypatch.setattr(wakeup.Wakeup, "wake", recording)
    with _federation(db_url, tmp_path) as fed:
        _advertise_and_share(fed, share=False)
        *first, last = fed.silos.items()
        for name, client in first:
            task = _task(client, "secagg_share")
            del topics[:]
            secure_round.share(client, client.key, task, fed.workspace / name)
            assert topics and set(topics) == {wakeup.ANSWERS}, (name, topics)
        name, client = last
        del topics[:]
        secure_round.share(client, client.key, _task(client, "secagg_share"), fed.workspace / name)
        assert wakeup.ALL in topics  # the stage closed: every silo's task changed


def test_replays_fetch_and_parse_each_committed_message_once(db_url: str, tmp_path: Path) -> None:
    """Every request replays the round's mailbox: a process parses each committed message
    once and later replays fetch no payload. A transaction that wrote a mailbox row (and may
    be rolled back, its row id reused on SQLite) reads but does not fill the cache."""
    from sqlalchemy import create_engine, event, select
    from sqlalchemy.orm import Session

    from aggregation.service import secure_rounds
    from aggregation.service.tables import SecAggMessage

    with _federation(db_url, tmp_path) as fed:
        _advertise_and_share(fed)
        engine = create_engine(db_url)
        statements: list[str] = []
        event.listen(engine, "before_cursor_execute", lambda *a: statements.append(a[2]))
        try:
            with Session(engine) as s:
                rows = (
                    s.execute(
                        select(SecAggMessage.id, SecAggMessage.stage).where(
                            SecAggMessage.run_id == fed.run_id
                        )
                    )
                    .tuples()
                    .all()
                )
                secure_rounds._PARSED.clear()
                s.info[secure_rounds._WROTE_MAILBOX] = True  # as after its own insert
                untrusted = secure_rounds._parsed(s, fed.run_id, rows)
                assert not secure_rounds._PARSED
            with Session(engine) as s:
                first = secure_rounds._parsed(s, fed.run_id, rows)
                del statements[:]
                again = secure_rounds._parsed(s, fed.run_id, rows)
                assert statements == []  # nothing fetched: every row was parsed before
        finally:
            engine.dispose()
    assert len(rows) == 6 and {stage for _, stage in rows} == {"advertise", "share"}
    assert all(again[i] is first[i] for i, _ in rows)
    assert [untrusted[i].to_bytes() for i, _ in rows] == [again[i].to_bytes() for i, _ in rows]


def test_a_replay_applies_only_the_rows_added_since_this_process_last_replayed(
    db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`rebuild` continues from the process's last replay of the round: a second request
    applies no stored message again, and one after a new message applies that one only."""
    from sqlalchemy import create_engine
    from sqlalchemy.orm import Session

    from aggregation.secagg import server
    from aggregation.service import secure_rounds
    from aggregation.service.rounds import get_round
    from aggregation.service.runs import get_run, spec_of

    applied: list[str] = []
    for name in ("receive_advertise", "receive_shares"):
        real = getattr(server, name)
        monkeypatch.setattr(
            server, name, lambda state, msg, real=real: (applied.append(msg.silo), real(state, msg))
        )
    with _federation(db_url, tmp_path) as fed:
        _advertise_and_share(fed, share=False)
        engine = create_engine(db_url)
        try:

            def replay() -> dict[str, object]:
                with Session(engine) as s:
                    run = get_run(s, fed.run_id)
                    rnd = get_round(s, fed.run_id, 1)
                    return _state_view(_REBUILD(s, run, rnd, spec_of(run)))

            secure_rounds._REPLAYED.clear()
            del applied[:]
            first = replay()
            assert sorted(applied) == ["a", "b", "c"]  # the three adverts, from scratch
            del applied[:]
            assert replay() == first and applied == []  # nothing new: nothing applied
            client = fed.silos["b"]
            secure_round.share(
                client, client.key, _task(client, "secagg_share"), fed.workspace / "b"
            )
            del applied[:]
            after = replay()
            assert applied == ["b"]  # b's shares only: the adverts stage stays closed
            secure_rounds._REPLAYED.clear()
            del applied[:]
            assert replay() == after  # the same state as a replay of the whole mailbox
            assert sorted(applied) == ["a", "b", "b", "c"]  # three adverts, b's shares
        finally:
            engine.dispose()
