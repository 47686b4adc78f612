"""Asynchronous (FedBuff) rounds over real HTTP on SQLite and PostgreSQL: a buffer closes at its
K-th update, a late update joins the open buffer with its staleness and weight, one beyond the
maximum staleness is dropped and recorded, and the ledger says which was which."""

from __future__ import annotations

import json
import math
import uuid

import numpy as np
import pytest
from support.api_federation import NAMES, SHAPES, Fed, deltas, payload
from support.live_service import coordinator, enrolled_silo
from support.validation import validate_all

from schemas import tensors
from schemas.specs import AsyncSpec, ModelSpec, RunSpec, SecureAggregationSpec
from schemas.wire import RoundOpen, RunCreate
from silos.client_errors import BetweenBuffers, ServiceRejected

N = {"a": 10, "b": 30, "c": 60}


def async_federation(url: str, max_staleness: int | None) -> Fed:
    """Silos a, b, c; a run of buffers of K=2 (round 1 open), every silo validated."""
    federation = f"f-{uuid.uuid4().hex[:12]}"
    coord = coordinator(url)
    coord.create_federation(federation)
    silos = {n: enrolled_silo(url, coord, federation, n) for n in N}
    spec = RunSpec(
        federation=federation,
        dataset="toy",
        model=ModelSpec(kind="logreg", n_features=3),
        rounds=6,
        min_silos=2,
        secure_aggregation=SecureAggregationSpec(enabled=False),
        asynchronous=AsyncSpec(buffer_size=2, max_staleness=max_staleness),
    )
    run = coord.create_run(RunCreate(spec=spec))
    initial = deltas(99)
    coord.put_initial_model(run.run_id, tensors.encode(dict(zip(NAMES, initial, strict=True))))
    coord.start_run(run.run_id)
    coord.open_round(run.run_id, RoundOpen(round=1, deadline_s=60))
    validate_all(silos, run.run_id)
    return Fed(url, coord, silos, run.run_id, initial, federation)


def model(fed: Fed, version: int) -> list[np.ndarray]:
    return tensors.decode_expected(fed.coord.download_model(fed.run_id, version), SHAPES)[0]


def aggregate_entry(fed: Fed, round_: int) -> dict[str, object]:
    entries = [json.loads(e.payload) for e in fed.coord.ledger(fed.run_id) if e.kind == "aggregate"]
    return next(e for e in entries if e["round"] == round_)


def send(fed: Fed, silo: str, round_: int, seed: int, body: bytes = b"") -> dict[str, object]:
    body = body or payload(deltas(seed), fed.run_id, round_, n=N[silo])
    return fed.silos[silo].submit_update(fed.run_id, round_, body)


def expect(base: list[np.ndarray], parts: list[tuple[int, float, int]]) -> list[np.ndarray]:
    """base + sum n * s * delta(seed) / sum n over (n, s, seed)."""
    total = sum(n for n, _, _ in parts)
    out = []
    for i, b in enumerate(base):
        out.append(b + sum(n * s * deltas(seed)[i] for n, s, seed in parts) / total)
    return out


def test_buffer_closes_at_k_and_a_late_update_joins_the_next_with_its_staleness(
    api_service_url: str,
) -> None:
    fed = async_federation(api_service_url, max_staleness=2)
    for client in fed.silos.values():
        task = client.next_task(wait_s=0)
        assert task is not None and task.type == "train" and task.round == 1
    send(fed, "a", 1, seed=1)
    assert fed.coord.wait_round(fed.run_id, 1, 0).status == "open"  # 1 of K=2
    send(fed, "b", 1, seed=2)
    first = fed.coord.wait_round(fed.run_id, 1, 0)
    assert first.status == "aggregated" and first.model_version == 1  # closed by the K-th
    v1 = expect(fed.initial, [(N["a"], 1.0, 1), (N["b"], 1.0, 2)])
    for got, want in zip(model(fed, 1), v1, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)

    fed.coord.open_round(fed.run_id, RoundOpen(round=2, deadline_s=60))
    body = payload(deltas(3), fed.run_id, 1, n=N["c"])  # c trained on v0 for round 1
    late = send(fed, "c", 1, seed=3, body=body)  # round 1 is closed: it joins buffer 2
    assert late["buffer"] == 2 and not late["duplicate"]
    again = send(fed, "c", 1, seed=3, body=body)  # a retry after a lost answer counts once
    assert again["duplicate"]
    assert fed.silos["c"].next_task(wait_s=0) is None  # c's update is in buffer 2
    assert fed.coord.wait_round(fed.run_id, 2, 0).status == "open"
    send(fed, "a", 2, seed=4)
    second = fed.coord.wait_round(fed.run_id, 2, 0)
    assert second.status == "aggregated" and second.model_version == 2
    v2 = expect(v1, [(N["c"], 1 / math.sqrt(2), 3), (N["a"], 1.0, 4)])
    for got, want in zip(model(fed, 2), v2, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)

    entry = aggregate_entry(fed, 2)
    by_silo = {c["silo"]: c for c in entry["contributors"]}  # type: ignore[attr-defined]
    assert by_silo["c"]["base_round"] == 1 and by_silo["c"]["base_version"] == 0
    assert by_silo["c"]["staleness"] == 1
    assert by_silo["c"]["weight"] == pytest.approx(1 / math.sqrt(2))
    assert by_silo["a"]["staleness"] == 0 and by_silo["a"]["weight"] == 1.0
    assert entry["dropped_stale"] == []
    assert entry["asynchronous"] == {  # type: ignore[comparison-overlap]
        "buffer_size": 2,
        "max_staleness": 2,
        "staleness_weight": "sqrt",
    }


def test_update_beyond_max_staleness_is_dropped_and_recorded(api_service_url: str) -> None:
    fed = async_federation(api_service_url, max_staleness=0)
    send(fed, "a", 1, seed=1)
    send(fed, "b", 1, seed=2)
    fed.coord.open_round(fed.run_id, RoundOpen(round=2, deadline_s=60))
    send(fed, "c", 1, seed=3)  # staleness 1 > 0: kept out of the buffer's count
    send(fed, "a", 2, seed=4)
    assert fed.coord.wait_round(fed.run_id, 2, 0).status == "open"  # c did not count
    send(fed, "b", 2, seed=5)
    assert fed.coord.wait_round(fed.run_id, 2, 0).status == "aggregated"
    v1 = model(fed, 1)
    v2 = expect(v1, [(N["a"], 1.0, 4), (N["b"], 1.0, 5)])
    for got, want in zip(model(fed, 2), v2, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    entry = aggregate_entry(fed, 2)
    assert entry["dropped_stale"] == [{"silo": "c", "staleness": 1}]
    assert sorted(c["silo"] for c in entry["contributors"]) == ["a", "b"]  # type: ignore[attr-defined]


def test_without_a_cap_a_slow_silos_update_joins_however_stale(api_service_url: str) -> None:
    """The default (no max_staleness, as in FedBuff): c, slow, trained on v0 while a and b
    filled five buffers; its update still counts, weighted 1/sqrt(1+5). The old default cap of
    4 dropped it, as it dropped every update of a silo 5x slower than the others in
    `bench/async_rounds.py`."""
    assert AsyncSpec(buffer_size=2).max_staleness is None
    fed = async_federation(api_service_url, max_staleness=None)
    body = payload(deltas(3), fed.run_id, 1, n=N["c"])  # c's update, trained on v0
    seed = 10
    for round_ in range(1, 6):  # a and b fill buffers 1-5
        if round_ > 1:
            fed.coord.open_round(fed.run_id, RoundOpen(round=round_, deadline_s=60))
        for silo in ("a", "b"):
            send(fed, silo, round_, seed=seed)
            seed += 1
    fed.coord.open_round(fed.run_id, RoundOpen(round=6, deadline_s=60))
    assert send(fed, "c", 1, seed=3, body=body)["buffer"] == 6
    send(fed, "a", 6, seed=seed)
    assert fed.coord.wait_round(fed.run_id, 6, 0).status == "aggregated"
    v6 = expect(model(fed, 5), [(N["c"], 1 / math.sqrt(6), 3), (N["a"], 1.0, seed)])
    for got, want in zip(model(fed, 6), v6, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    entry = aggregate_entry(fed, 6)
    by_silo = {c["silo"]: c for c in entry["contributors"]}  # type: ignore[attr-defined]
    assert by_silo["c"]["staleness"] == 5 and entry["dropped_stale"] == []
    assert entry["asynchronous"]["max_staleness"] is None  # type: ignore[index]


def test_late_update_with_no_buffer_open_is_refused(api_service_url: str) -> None:
    fed = async_federation(api_service_url, max_staleness=4)
    body = payload(deltas(1), fed.run_id, 1, n=N["a"])
    send(fed, "a", 1, seed=1, body=body)
    send(fed, "b", 1, seed=2)
    fed.coord.open_round(fed.run_id, RoundOpen(round=2, kind="evaluate", deadline_s=60))
    again = send(fed, "a", 1, seed=1, body=body)  # a retry of an applied update: no 409
    assert again["duplicate"] and again["buffer"] == 1
    with pytest.raises(ServiceRejected) as err:
        send(fed, "c", 1, seed=3)
    assert err.value.status == 409 and "no buffer to join" in str(err.value)


def test_update_between_two_buffers_is_asked_again_and_joins_the_next(
    api_service_url: str,
) -> None:
    """A slow silo's update that comes after buffer 1 closed and before buffer 2 opens is not
    lost: the service says `between_buffers` (nothing stored), the resend joins buffer 2."""
    fed = async_federation(api_service_url, max_staleness=2)
    send(fed, "a", 1, seed=1)
    send(fed, "b", 1, seed=2)
    assert fed.coord.wait_round(fed.run_id, 1, 0).status == "aggregated"
    body = payload(deltas(3), fed.run_id, 1, n=N["c"])
    with pytest.raises(BetweenBuffers) as err:
        send(fed, "c", 1, seed=3, body=body)
    assert err.value.status == 409 and "send the same update again" in err.value.detail
    fed.coord.open_round(fed.run_id, RoundOpen(round=2, deadline_s=60))
    late = send(fed, "c", 1, seed=3, body=body)
    assert late["buffer"] == 2 and not late["duplicate"]
    send(fed, "a", 2, seed=4)
    assert fed.coord.wait_round(fed.run_id, 2, 0).status == "aggregated"
    by_silo = {c["silo"]: c for c in aggregate_entry(fed, 2)["contributors"]}  # type: ignore[attr-defined]
    assert by_silo["c"]["staleness"] == 1 and by_silo["c"]["base_round"] == 1


def test_update_after_a_failed_buffer_is_asked_again_and_joins_the_next(
    api_service_url: str,
) -> None:
    """The coordinator opens the next buffer after a failed one too: an update arriving in
    between is asked again (`between_buffers`), not refused for good with its training lost."""
    fed = async_federation(api_service_url, max_staleness=2)
    send(fed, "a", 1, seed=1)
    assert fed.coord.close_round(fed.run_id, 1).status == "failed"  # deadline: 1 < min_silos
    body = payload(deltas(2), fed.run_id, 1, n=N["b"])
    with pytest.raises(BetweenBuffers) as err:
        send(fed, "b", 1, seed=2, body=body)
    assert err.value.status == 409 and "(failed)" in err.value.detail
    fed.coord.open_round(fed.run_id, RoundOpen(round=2, deadline_s=60))
    late = send(fed, "b", 1, seed=2, body=body)
    assert late["buffer"] == 2 and not late["duplicate"]


def test_async_spec_refuses_small_buffers() -> None:
    base = {"federation": "f", "dataset": "toy", "model": ModelSpec(kind="logreg", n_features=3)}
    with pytest.raises(ValueError, match="below min_silos"):
        RunSpec(
            **base,  # type: ignore[arg-type]
            min_silos=3,
            secure_aggregation=SecureAggregationSpec(enabled=False),
            asynchronous=AsyncSpec(buffer_size=2),
        )


def _absent(fed: Fed, round_: int) -> dict[str, tuple[str, str | None]]:
    """Round `round_`'s silos without an answer there: their state and reason."""
    out = fed.coord.wait_round(fed.run_id, round_, 0)
    return {s.silo: (s.state, s.reason) for s in out.silos if s.state == "waiting"}


def test_a_closed_buffer_says_where_a_slow_silos_update_went(api_service_url: str) -> None:
    """Buffer 1 closed at a's and b's updates; c's update of round 1 joined buffer 2. Buffer 1
    used to show c as if it still waited for it; it says where c's update went, and buffer 2
    that b sent none there."""
    fed = async_federation(api_service_url, max_staleness=2)
    send(fed, "a", 1, seed=1)
    send(fed, "b", 1, seed=2)
    # no later buffer has applied c's update yet: all that is known is that 1 has none
    assert _absent(fed, 1) == {"c": ("waiting", "no update in this buffer")}
    fed.coord.open_round(fed.run_id, RoundOpen(round=2, deadline_s=60))
    send(fed, "c", 1, seed=3)
    send(fed, "a", 2, seed=4)
    assert fed.coord.wait_round(fed.run_id, 2, 0).status == "aggregated"
    assert _absent(fed, 1) == {"c": ("waiting", "its update of round 1 went into buffer 2")}
    assert _absent(fed, 2) == {"b": ("waiting", "no update in this buffer")}
    rounds = {r.round: r for r in fed.coord.rounds(fed.run_id)}  # the list says the same
    assert [s.reason for s in rounds[1].silos if s.silo == "c"] == [
        "its update of round 1 went into buffer 2"
    ]


def test_a_closed_buffer_says_a_slow_silos_update_was_too_stale(api_service_url: str) -> None:
    fed = async_federation(api_service_url, max_staleness=0)
    send(fed, "a", 1, seed=1)
    send(fed, "b", 1, seed=2)
    fed.coord.open_round(fed.run_id, RoundOpen(round=2, deadline_s=60))
    send(fed, "c", 1, seed=3)  # staleness 1 > 0: dropped from buffer 2
    send(fed, "a", 2, seed=4)
    send(fed, "b", 2, seed=5)
    assert fed.coord.wait_round(fed.run_id, 2, 0).status == "aggregated"
    reason = "its update was too stale for buffer 2 (staleness 1)"
    assert _absent(fed, 1) == {"c": ("waiting", reason)}
