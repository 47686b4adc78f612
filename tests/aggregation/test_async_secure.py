"""Secure aggregation in asynchronous (FedBuff) buffers over real HTTP, on SQLite and PostgreSQL:
the K-th ready silo fixes the buffer's cohort, the cohort runs the secure-aggregation stages
with the silo agent's own protocol functions, each masking its update times its staleness
weight; a silo ready during a cohort waits for the next buffer; a dropout is recovered; the
ledger records staleness and weights, and that the aggregate was secure."""

from __future__ import annotations

import json
import math
import uuid
from pathlib import Path

import numpy as np
import pytest
from support.live_service import coordinator, enrolled_silo
from support.validation import validate_all

from flows.service_client import CoordinatorClient
from schemas import tensors
from schemas.specs import AsyncSpec, ModelSpec, RunSpec, SecureAggregationSpec, param_shapes
from schemas.tasks import SecAggBufferedTask
from schemas.wire import Metrics, RoundOpen, RunCreate
from silos import secure_round
from silos.client import SiloClient
from silos.client_errors import ServiceRejected

MODEL = ModelSpec(kind="logreg", n_features=3)
SHAPES = param_shapes(MODEL)
DIM = sum(int(np.prod(s)) for _, s in SHAPES)
N = {"a": 10, "b": 30, "c": 60}
METRICS = Metrics(n_test=10, loss=0.5, accuracy=0.8, auc=0.9).model_dump_json()


class Buffers:
    """A run of secure buffers of size `k` among silos a, b, c (round 1 open, all validated)."""

    def __init__(self, url: str, ws: Path, k: int, max_staleness: int = 2) -> None:
        federation = f"f-{uuid.uuid4().hex[:12]}"
        self.coord: CoordinatorClient = coordinator(url)
        self.coord.create_federation(federation)
        self.silos: dict[str, SiloClient] = {
            n: enrolled_silo(url, self.coord, federation, n) for n in N
        }
        spec = RunSpec(
            federation=federation,
            dataset="toy",
            model=MODEL,
            rounds=3,
            min_silos=2,
            secure_aggregation=SecureAggregationSpec(clip=50.0, threshold=2),
            asynchronous=AsyncSpec(buffer_size=k, max_staleness=max_staleness),
        )
        self.run_id = self.coord.create_run(RunCreate(spec=spec)).run_id
        self.initial = np.random.default_rng(0).normal(size=DIM)
        self.coord.put_initial_model(self.run_id, encode(self.initial))
        self.coord.start_run(self.run_id)
        self.coord.open_round(self.run_id, RoundOpen(round=1, deadline_s=60))
        validate_all(self.silos, self.run_id)
        self.ws = ws

    def task(self, silo: str, expected: str | None):  # type: ignore[no-untyped-def]
        task = self.silos[silo].next_task(wait_s=0)
        if expected is None:
            assert task is None, task
            return None
        assert task is not None and task.type == expected, task
        return task

    def ready(self, silo: str, base_round: int) -> dict[str, object]:
        return self.silos[silo].announce_ready(self.run_id, base_round, N[silo])

    def stages_until_masked(
        self, silos: list[str], delta: dict[str, np.ndarray], skip: tuple[str, ...] = ()
    ) -> dict[str, SecAggBufferedTask]:
        """Advertise and share for `silos`, then the masked stage for those not in `skip`."""
        for name in silos:
            client = self.silos[name]
            work = self.task(name, "secagg_advertise")
            secure_round.advertise(client, client.key, work, self.ws / name, n_examples=N[name])
        for name in silos:
            client = self.silos[name]
            secure_round.share(client, client.key, self.task(name, "secagg_share"), self.ws / name)
        tasks = {}
        for name in silos:
            if name in skip:
                continue
            client, work = self.silos[name], self.task(name, "secagg_buffered")
            assert isinstance(work, SecAggBufferedTask) and work.secagg.weight is not None
            weighted = work.secagg.weight * delta[name]
            message = secure_round.masked_update(client, client.key, work, self.ws / name, weighted)
            client.submit_masked(
                self.run_id, work.round, message, N[name], 0.01, METRICS, work.base_round
            )
            tasks[name] = work
        return tasks

    def unmask(self, silos: list[str]) -> None:
        for name in silos:
            client = self.silos[name]
            work = self.task(name, "secagg_unmask")
            secure_round.unmask(client, client.key, work, self.ws / name)

    def model(self, version: int) -> np.ndarray:
        payload = self.coord.download_model(self.run_id, version)
        return np.concatenate([a.ravel() for a in tensors.decode_expected(payload, SHAPES)[0]])

    def aggregate(self, round_: int) -> dict[str, object]:
        entries = [json.loads(e.payload) for e in self.coord.ledger(self.run_id)]
        return next(e for e in entries if e.get("round") == round_ and "aggregate_digest" in e)


def encode(flat: np.ndarray) -> bytes:
    arrays, start = {}, 0
    for name, shape in SHAPES:
        size = int(np.prod(shape))
        arrays[name] = flat[start : start + size].reshape(shape).astype(np.float32)
        start += size
    return tensors.encode(arrays)


def deltas(seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {name: rng.normal(scale=0.3, size=DIM) for name in N}


def test_cohort_of_k_ready_silos_aggregates_securely_with_staleness_weights(
    api_service_url: str, tmp_path: Path
) -> None:
    fed = Buffers(api_service_url, tmp_path, k=2)
    for name in N:
        fed.task(name, "train")
    d1 = deltas(1)
    first = fed.ready("a", 1)
    assert first["buffer"] == 1 and not first["cohort"]
    assert fed.coord.wait_round(fed.run_id, 1, 0).secagg_stage is None  # 1 ready of K=2
    assert fed.ready("b", 1)["cohort"]  # the K-th fixes the cohort: a and b
    assert fed.ready("b", 1)["duplicate"]  # a retry after a lost answer counts once
    out = fed.coord.wait_round(fed.run_id, 1, 0)
    assert out.secagg_stage == "advertise" and out.status == "open"
    fed.task("c", "train")  # c is not in the cohort: it keeps training
    tasks = fed.stages_until_masked(["a", "b"], d1)
    assert tasks["a"].base_round == 1 and tasks["a"].staleness == 0
    waiting = fed.ready("c", 1)  # ready while buffer 1's cohort runs: waits for buffer 2
    assert waiting["buffer"] == 1 and not waiting["cohort"]
    for name in ("b", "c"):  # a repeat with another weight is no retry: refused, not ignored
        with pytest.raises(ServiceRejected) as err:
            fed.silos[name].announce_ready(fed.run_id, 1, N[name] + 1)
        assert err.value.status == 409
        assert f"silo {name!r} announced round 1's update with n_examples={N[name]}" in str(
            err.value
        )
    fed.task("c", None)
    fed.unmask(["a", "b"])
    assert fed.coord.wait_round(fed.run_id, 1, 5).status == "aggregated"
    v1 = fed.initial + (N["a"] * d1["a"] + N["b"] * d1["b"]) / (N["a"] + N["b"])
    np.testing.assert_allclose(fed.model(1), v1, atol=1e-5)

    fed.coord.open_round(fed.run_id, RoundOpen(round=2, deadline_s=60))  # c carried over
    assert fed.coord.wait_round(fed.run_id, 2, 0).secagg_stage is None
    fed.task("a", "train")
    d2 = deltas(2)
    assert fed.ready("a", 2)["cohort"]  # c (stale by 1) and a (fresh) form buffer 2's cohort
    tasks = fed.stages_until_masked(["a", "c"], d2)
    s = 1 / math.sqrt(2)
    assert tasks["c"].base_round == 1 and tasks["c"].staleness == 1
    assert tasks["c"].secagg.weight == pytest.approx(N["c"] / (N["a"] + N["c"]) * s)
    fed.unmask(["a", "c"])
    assert fed.coord.wait_round(fed.run_id, 2, 5).status == "aggregated"
    v2 = v1 + (N["a"] * d2["a"] + N["c"] * s * d2["c"]) / (N["a"] + N["c"])
    np.testing.assert_allclose(fed.model(2), v2, atol=1e-5)

    entry = fed.aggregate(2)
    assert entry["secure_aggregation"] is True
    assert entry["individual_updates_seen_by_service"] is False
    by_silo = {c["silo"]: c for c in entry["contributors"]}  # type: ignore[attr-defined]
    assert by_silo["c"]["base_round"] == 1 and by_silo["c"]["staleness"] == 1
    assert by_silo["c"]["weight"] == pytest.approx(s)
    assert by_silo["a"]["staleness"] == 0 and by_silo["a"]["weight"] == 1.0
    assert entry["cohort"] == ["a", "c"] and entry["dropped_stale"] == []
    assert entry["asynchronous"] == {  # type: ignore[comparison-overlap]
        "buffer_size": 2,
        "max_staleness": 2,
        "staleness_weight": "sqrt",
    }


def test_a_cohort_member_that_drops_after_sharing_is_recovered(
    api_service_url: str, tmp_path: Path
) -> None:
    fed = Buffers(api_service_url, tmp_path, k=3)
    for name in N:
        fed.task(name, "train")
        fed.ready(name, 1)
    d = deltas(3)
    fed.stages_until_masked(["a", "b", "c"], d, skip=("c",))
    assert fed.coord.wait_round(fed.run_id, 1, 0).status == "open"
    fed.coord.close_round(fed.run_id, 1)  # the deadline passed: c is a dropout
    fed.unmask(["a", "b"])
    assert fed.coord.wait_round(fed.run_id, 1, 5).status == "aggregated"
    expected = fed.initial + (N["a"] * d["a"] + N["b"] * d["b"]) / (N["a"] + N["b"])
    np.testing.assert_allclose(fed.model(1), expected, atol=1e-5)
    kinds = [e.kind for e in fed.coord.ledger(fed.run_id)]
    assert "dropout" in kinds and "recovery" in kinds


def test_deadline_runs_the_ready_silos_if_enough_else_fails_saying_so(
    api_service_url: str, tmp_path: Path
) -> None:
    fed = Buffers(api_service_url, tmp_path, k=3)
    fed.ready("a", 1)
    out = fed.coord.close_round(fed.run_id, 1)  # one ready silo cannot be aggregated securely
    assert out.status == "failed"
    assert "1 silos ready by the deadline (a)" in (out.reason or "")

    fed = Buffers(api_service_url, tmp_path / "2", k=3)
    fed.ready("a", 1)
    fed.ready("b", 1)
    out = fed.coord.close_round(fed.run_id, 1)  # two of K=3: a cohort of two runs
    assert out.status == "open" and out.secagg_stage == "advertise"
    fed.task("c", "train")
    fed.task("a", "secagg_advertise")


def test_each_member_signs_its_base_round_and_a_wrong_one_is_refused(
    api_service_url: str, tmp_path: Path
) -> None:
    """The base round (hence staleness) in the ledger is the silo's own signed claim: a masked
    update whose statement names another base round than the cohort records is refused,
    naming the silo and the round the cohort expects, and nothing of it is kept."""
    fed = Buffers(api_service_url, tmp_path, k=2)
    for name in ("a", "b"):
        fed.task(name, "train")
        fed.ready(name, 1)
    for name in ("a", "b"):
        client = fed.silos[name]
        secure_round.advertise(
            client, client.key, fed.task(name, "secagg_advertise"), fed.ws / name, N[name]
        )
    for name in ("a", "b"):
        client = fed.silos[name]
        secure_round.share(client, client.key, fed.task(name, "secagg_share"), fed.ws / name)
    d = deltas(4)
    a, work = fed.silos["a"], fed.task("a", "secagg_buffered")
    assert isinstance(work, SecAggBufferedTask) and work.base_round == 1
    message = secure_round.masked_update(a, a.key, work, fed.ws / "a", work.secagg.weight * d["a"])
    for claimed in (None, 2):  # unsigned, or signed for a later (fresher) round than it was
        with pytest.raises(ServiceRejected) as err:
            a.submit_masked(fed.run_id, 1, message, N["a"], 0.01, METRICS, claimed)
        assert err.value.status == 422, err.value
        assert "'a'" in err.value.detail and "base round 1" in err.value.detail
    fed.task("a", "secagg_buffered")  # refused: the masked stage still awaits a
    answer = a.submit_masked(fed.run_id, 1, message, N["a"], 0.01, METRICS, 1)
    assert json.loads(answer["statement"]["payload"])["base_round"] == 1
    accepted = [
        json.loads(e.payload) for e in fed.coord.ledger(fed.run_id) if e.kind == "update_accepted"
    ]
    assert [(p["silo"], p["round"], p["base_round"]) for p in accepted] == [("a", 1, 1)]


def test_a_masked_count_other_than_the_advertised_one_is_refused(
    api_service_url: str, tmp_path: Path
) -> None:
    """The weight applied is n_k / N of the advertised count: a masked update claiming another
    count (which the contribution, aggregate entry and statement would record) is refused,
    naming the silo and round, and nothing of it is kept."""
    fed = Buffers(api_service_url, tmp_path, k=2)
    for name in ("a", "b"):
        fed.task(name, "train")
        fed.ready(name, 1)
    d = deltas(5)
    fed.stages_until_masked(["a", "b"], d, skip=("a",))
    a, work = fed.silos["a"], fed.task("a", "secagg_buffered")
    message = secure_round.masked_update(a, a.key, work, fed.ws / "a", work.secagg.weight * d["a"])
    with pytest.raises(ServiceRejected) as err:
        a.submit_masked(fed.run_id, 1, message, 1, 0.01, METRICS, 1)
    assert err.value.status == 422, err.value
    detail = err.value.detail
    assert (
        "silo 'a' for round 1" in detail and "n_examples=1" in detail and "advertised 10" in detail
    )
    fed.task("a", "secagg_buffered")  # refused: the masked stage still awaits a
    a.submit_masked(fed.run_id, 1, message, N["a"], 0.01, METRICS, 1)
    fed.unmask(["a", "b"])
    assert fed.coord.wait_round(fed.run_id, 1, 5).status == "aggregated"
    counts = {c["silo"]: c["n_examples"] for c in fed.aggregate(1)["contributors"]}  # type: ignore[attr-defined]
    assert counts == {"a": N["a"], "b": N["b"]}


def test_stage_messages_before_a_cohort_and_plain_updates_are_refused(
    api_service_url: str, tmp_path: Path
) -> None:
    fed = Buffers(api_service_url, tmp_path, k=2)
    a = fed.silos["a"]
    with pytest.raises(ServiceRejected) as err:
        a.secagg_post(fed.run_id, 1, "advertise", b"\x00" * 8, n_examples=5)
    assert err.value.status == 409 and "no cohort yet" in err.value.detail
    with pytest.raises(ServiceRejected) as err:
        a.submit_update(fed.run_id, 1, encode(np.zeros(DIM)))
    assert err.value.status == 409 and "announce ready" in err.value.detail


def test_buffer_size_below_the_threshold_is_refused_at_run_creation() -> None:
    base = {"federation": "f", "dataset": "toy", "model": MODEL}
    with pytest.raises(ValueError, match="below what a secure buffer needs"):
        RunSpec(
            **base,  # type: ignore[arg-type]
            min_silos=2,
            secure_aggregation=SecureAggregationSpec(threshold=3),
            asynchronous=AsyncSpec(buffer_size=2),
        )
    with pytest.raises(ValueError, match="below what a secure buffer needs"):
        RunSpec(**base, min_silos=1, asynchronous=AsyncSpec(buffer_size=1))  # type: ignore[arg-type]


def test_a_silo_outside_the_cohort_fetches_nothing_of_it(
    api_service_url: str, tmp_path: Path
) -> None:
    """A run participant outside the cohort used to get every advert (a 500 under SecAgg+)."""
    fed = Buffers(api_service_url, tmp_path, k=2)
    for name in N:
        fed.task(name, "train")
    fed.ready("a", 1)
    assert fed.ready("b", 1)["cohort"]  # the cohort is a and b: c is outside it
    fed.stages_until_masked(["a", "b"], deltas(1), skip=("a", "b"))  # the share stage is done
    for what in ("adverts", "shares", "unmask-request"):
        with pytest.raises(ServiceRejected) as err:
            fed.silos["c"].secagg_get(fed.run_id, 1, what)
        assert err.value.status == 403 and "silo 'c'" in err.value.detail, err.value.detail
        assert "round 1" in err.value.detail


def test_a_buffer_short_of_k_runs_as_soon_as_every_active_silo_is_ready(
    api_service_url: str, tmp_path: Path
) -> None:
    """K=3, and c left the run: a buffer used to wait for a third ready silo until its
    deadline. With a and b both ready nobody else can come, so their cohort runs at once, as a
    plain buffer closes once every silo answered (threshold 2 still holds: 2 of 2)."""
    fed = Buffers(api_service_url, tmp_path, k=3)
    fed.silos["c"].refuse(fed.run_id, "policy: not this run")
    assert not fed.ready("a", 1)["cohort"]  # b still trains
    assert fed.coord.wait_round(fed.run_id, 1, 0).awaited == ["b"]
    assert fed.ready("b", 1)["cohort"]  # the last active silo: the cohort is a and b
    out = fed.coord.wait_round(fed.run_id, 1, 0)
    assert out.secagg_stage == "advertise" and out.awaited == ["a", "b"]
    d = deltas(6)
    fed.stages_until_masked(["a", "b"], d)
    fed.unmask(["a", "b"])
    assert fed.coord.wait_round(fed.run_id, 1, 5).status == "aggregated"
    expected = fed.initial + (N["a"] * d["a"] + N["b"] * d["b"]) / (N["a"] + N["b"])
    np.testing.assert_allclose(fed.model(1), expected, atol=1e-5)
    assert fed.aggregate(1)["cohort"] == ["a", "b"]


def test_a_silo_leaving_fixes_the_cohort_of_those_ready(
    api_service_url: str, tmp_path: Path
) -> None:
    """a and b are ready and wait for c; c leaves the run: the cohort is fixed then (the
    refusal unblocks the buffer), not at the deadline."""
    fed = Buffers(api_service_url, tmp_path, k=3)
    fed.ready("a", 1)
    fed.ready("b", 1)
    assert fed.coord.wait_round(fed.run_id, 1, 0).secagg_stage is None  # c trains
    fed.silos["c"].refuse(fed.run_id, "policy: not this run")
    out = fed.coord.wait_round(fed.run_id, 1, 0)
    assert out.status == "open" and out.secagg_stage == "advertise"
    fed.task("a", "secagg_advertise")


def test_a_buffer_too_short_for_secure_aggregation_fails_once_all_are_ready(
    api_service_url: str, tmp_path: Path
) -> None:
    """b and c left: a alone cannot be aggregated securely (2 silos at least, the threshold),
    so once a is ready the buffer fails now, saying why, instead of idling to its deadline."""
    fed = Buffers(api_service_url, tmp_path, k=3)
    for name in ("b", "c"):
        fed.silos[name].refuse(fed.run_id, "policy: not this run")
    fed.ready("a", 1)
    out = fed.coord.wait_round(fed.run_id, 1, 0)
    assert out.status == "failed", out
    assert "buffer 1: every active silo is ready or has answered" in (out.reason or "")
    assert "the 1 ready (a) are too few" in (out.reason or "")
    assert "needs at least 2" in (out.reason or "")
    failed = [
        json.loads(e.payload) for e in fed.coord.ledger(fed.run_id) if e.kind == "round_failed"
    ]
    assert [f["round"] for f in failed] == [1]


def test_a_closed_buffer_says_a_carried_silos_update_went_into_the_next(
    api_service_url: str, tmp_path: Path
) -> None:
    """c became ready while buffer 1's cohort (a, b) ran and was carried into buffer 2. The
    closed buffer 1 used to show c "waiting" for good; it says where c's update went."""
    fed = Buffers(api_service_url, tmp_path, k=2)
    fed.ready("a", 1)
    fed.ready("b", 1)
    fed.stages_until_masked(["a", "b"], deltas(7))
    fed.ready("c", 1)  # waits for the next buffer
    fed.unmask(["a", "b"])
    assert fed.coord.wait_round(fed.run_id, 1, 5).status == "aggregated"
    fed.coord.open_round(fed.run_id, RoundOpen(round=2, deadline_s=60))
    fed.task("b", "train")
    fed.ready("b", 2)  # b and the carried c form buffer 2's cohort
    fed.stages_until_masked(["b", "c"], deltas(8))
    fed.unmask(["b", "c"])
    assert fed.coord.wait_round(fed.run_id, 2, 5).status == "aggregated"
    states = {s.silo: (s.state, s.reason) for s in fed.coord.wait_round(fed.run_id, 1, 0).silos}
    assert states["c"] == ("waiting", "its update of round 1 went into buffer 2")
    later = {s.silo: s.reason for s in fed.coord.wait_round(fed.run_id, 2, 0).silos}
    assert later["a"] == "no update in this buffer"
