"""Secure-hist runs at the service over real HTTP (SQLite and PostgreSQL), three silos running
the real silo code (`silos.hist_round`, `silos.hist_trainer`, the session client): the model
equals the in-process driver's on the same rows, loads in xgboost, survives a dropout, and
bad input is refused with the state left unchanged."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import xgboost as xgb
from sqlalchemy import create_engine, func, select
from support.live_service import (
    coordinator,
    enrolled_silo,
    publish_shipped_contract,
    service_in_thread,
)
from support.secure_hist_driver import run_secure_hist

from aggregation.secagg import session_server
from aggregation.service.tables import HistMessage, HistRun
from aggregation.trees.models import predict_proba
from flows.service_client import CoordinatorClient
from schemas.contracts.loader import load_contract
from schemas.secagg.exceptions import SecAggConfigError
from schemas.secagg.session_messages import AggregationRequest, SessionMasked
from schemas.secure_hist import packing
from schemas.secure_hist.protocol import HistRunConfig, LevelRequest
from schemas.specs import RunSpec, SecureAggregationSpec
from schemas.tasks import Task
from schemas.tree_params import TreeSpec, XGBoostParams
from schemas.wire import RoundOpen, RunCreate
from silos import hist_round
from silos.client import SiloClient
from silos.client_errors import ServiceRejected
from silos.features import FeaturePipeline
from silos.hist_binning import feature_ranges

CONTRACT = "heart_disease"
PIPELINE = FeaturePipeline.from_contract(load_contract(CONTRACT))
N_FEATURES = PIPELINE.n_features
SILOS = ("a", "b", "c")
PARAMS = {"max_depth": 2, "max_bin": 16}
HIST = {"fine_cells": 64, "min_rows_per_node": 5}


def rows(seed: int, n: int = 150) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    X = rng.uniform(0, 1, size=(n, N_FEATURES)).astype(np.float32)
    X[rng.random(n) < 0.1, 1] = np.nan
    y = (X[:, 0] + 0.5 * X[:, 2] + rng.normal(scale=0.2, size=n) > 0.8).astype(np.float64)
    return X, y


DATA = {name: rows(i) for i, name in enumerate(SILOS)}


def spec(rounds: int = 2, hist: dict | None = None) -> RunSpec:  # type: ignore[type-arg]
    trees = TreeSpec.model_validate(
        {
            "kind": "xgboost",
            "mode": "secure-hist",
            "n_features": N_FEATURES,
            "trees_per_round": 2,
            "params": PARAMS,
            "secure_hist": hist or HIST,
        }
    )
    return RunSpec(
        federation="f",
        dataset=CONTRACT,
        trees=trees,
        rounds=rounds,
        min_silos=2,
        secure_aggregation=SecureAggregationSpec(enabled=False),
    )


def expected(
    n_trees: int, drop_at: dict[str, tuple[int, int]] | None = None, grad_bits: int | None = None
) -> bytes:
    """The in-process driver on the same rows and parameters (the reference)."""
    config = HistRunConfig(
        objective="binary:logistic",
        params=XGBoostParams.model_validate(PARAMS),
        n_trees=n_trees,
        ranges=feature_ranges(PIPELINE),
        fine_cells=HIST["fine_cells"],
        min_rows_per_node=HIST["min_rows_per_node"],
        grad_bits=grad_bits,
    )
    # the service names the features as the silos' pipeline does (from the published contract)
    names = PIPELINE.feature_names
    return run_secure_hist(config, DATA, threshold=2, drop_at=drop_at, feature_names=names).model


@dataclass
class Fed:
    url: str
    db_url: str
    coord: CoordinatorClient
    silos: dict[str, SiloClient]
    run_id: str


@contextmanager
def federation(db_url: str, tmp_path: Path, run_spec: RunSpec) -> Iterator[Fed]:
    with service_in_thread(tmp_path / "svc", db_url) as url:
        coord = coordinator(url)
        coord.create_federation("f")
        publish_shipped_contract(coord, "f", CONTRACT)  # the service reads the published one
        silos = {n: enrolled_silo(url, coord, "f", n) for n in SILOS}
        run = coord.create_run(RunCreate(spec=run_spec))
        coord.put_initial_model(run.run_id, b"")
        coord.start_run(run.run_id)
        yield Fed(url, db_url, coord, silos, run.run_id)
        for client in silos.values():
            hist_round.forget(client.silo, run.run_id)


@pytest.fixture
def fed(db_url: str, tmp_path: Path) -> Iterator[Fed]:
    with federation(db_url, tmp_path, spec()) as f:
        yield f


def step(client: SiloClient, task: Task) -> None:
    """What the silo agent's `hist_step` does, minus Prefect."""
    assert task.type == "hist"
    if task.hist.stage == "advertise":
        X, y = DATA[client.silo]
        hist_round.advertise(client, task, X, y, load_contract(CONTRACT), 1)
    elif task.hist.stage == "masked":
        hist_round.masked(client, task)
    elif task.hist.stage == "consistency":
        hist_round.consistency(client, task)
    else:
        hist_round.unmask(client, task)


Skip = Callable[[str, Task], bool]


def drive(fed: Fed, number: int, skip: Skip = lambda silo, task: False) -> int:
    """Hand every task to its silo, the silos answering at the same time (as agents do),
    until round `number` closes or nobody has work; returns the number of tasks done."""
    done = 0
    with ThreadPoolExecutor(len(fed.silos)) as pool:
        while fed.coord.wait_round(fed.run_id, number, 0).status == "open":
            work = []
            for name, client in fed.silos.items():
                task = client.next_task(wait_s=0, run_id=fed.run_id)
                if task is not None and task.type == "hist" and not skip(name, task):
                    work.append((client, task))
            if not work:
                break
            for future in [pool.submit(step, client, task) for client, task in work]:
                future.result()
            done += len(work)
    return done


def train_round(fed: Fed, number: int, skip: Skip = lambda silo, task: False) -> None:
    fed.coord.open_round(fed.run_id, RoundOpen(round=number, kind="train", deadline_s=60))
    drive(fed, number, skip)


def check_native(model: bytes) -> None:
    X = np.random.default_rng(7).uniform(-0.5, 1.5, size=(300, N_FEATURES)).astype(np.float32)
    X[::5, 1] = np.nan
    booster = xgb.Booster(model_file=bytearray(model))
    np.testing.assert_allclose(
        booster.predict(xgb.DMatrix(X, feature_names=list(PIPELINE.feature_names))),
        predict_proba("xgboost", model, X),
        rtol=1e-5,
        atol=1e-6,
    )
    assert booster.feature_names == list(PIPELINE.feature_names)


def aggregates(fed: Fed) -> list[dict]:  # type: ignore[type-arg]
    out = []
    for e in fed.coord.ledger(fed.run_id):
        if e.kind == "aggregate":
            out.append(json.loads(e.payload) if isinstance(e.payload, str) else e.payload)
    return out


def test_secure_hist_rounds_grow_the_drivers_trees_over_http(fed: Fed) -> None:
    train_round(fed, 1)
    first = fed.coord.rounds(fed.run_id)[0]
    assert first.status == "aggregated", first
    assert sorted(s.silo for s in first.silos if s.state == "submitted") == list(SILOS)
    train_round(fed, 2)
    out = fed.coord.rounds(fed.run_id)[1]
    assert out.status == "aggregated", out
    model = fed.coord.download_model(fed.run_id, 2)
    assert model == expected(4)  # byte for byte the driver's model (4 trees)
    assert fed.coord.download_model(fed.run_id, 1) == expected(2)
    assert xgb.Booster(model_file=bytearray(model)).num_boosted_rounds() == 4
    check_native(model)
    entries = aggregates(fed)
    assert [e["round"] for e in entries] == [1, 2]
    for e in entries:
        assert e["secure_aggregation"] is True
        assert e["individual_updates_seen_by_service"] is False
        assert e["service_sees"].startswith("only federation-wide sums")
        assert e["dropouts"] == [] and e["tree_restarts"] == 0
    assert entries[0]["aggregations"] >= 3  # setup + at least one level per tree
    # masked vectors are summed and dropped; only their digests stay
    engine = create_engine(fed.db_url)
    with engine.connect() as conn:
        kept = conn.scalar(
            select(func.count()).where(
                HistMessage.run_id == fed.run_id,
                HistMessage.stage == "masked",
                HistMessage.payload.is_not(None),
            )
        )
    engine.dispose()
    assert kept == 0


def test_a_quantized_run_grows_the_drivers_trees_over_http(db_url: str, tmp_path: Path) -> None:
    """`secure_hist.grad_bits` in the run's spec reaches every silo: the silos round their
    gradients stochastically, as the driver's do, and the model is the driver's quantized one."""
    with federation(db_url, tmp_path, spec(1, {**HIST, "grad_bits": 3})) as quantized:
        train_round(quantized, 1)
        assert quantized.coord.rounds(quantized.run_id)[0].status == "aggregated"
        model = quantized.coord.download_model(quantized.run_id, 1)
    assert model == expected(2, grad_bits=3)
    assert model != expected(2)
    check_native(model)


def test_setup_rows_above_the_first_count_fail_the_round_naming_both(
    fed: Fed, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first aggregation's sum bounds the setup vector's counts on the wire; a silo that
    counts fewer rows there than its setup vector holds is caught by the 64-bit rows entry."""
    real = hist_round._rows
    monkeypatch.setattr(hist_round, "_rows", lambda h: 1 if h.name == "c" else real(h))
    train_round(fed, 1)
    first = fed.coord.rounds(fed.run_id)[0]
    assert first.status == "failed"
    counted = len(DATA["a"][1]) + len(DATA["b"][1]) + 1
    assert f"report {sum(len(y) for _, y in DATA.values())} training rows" in (first.reason or "")
    assert f"the {counted} the silos counted first" in (first.reason or "")


def test_a_seed_unusable_at_unmask_fails_the_round_instead_of_a_500(
    fed: Fed, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stored answer the unmasking cannot use (a short pairwise seed, stored before such
    answers were refused) used to 500 every later unmask answer, the round open for good."""

    def unusable(srv: session_server.SessionServer) -> None:
        raise SecAggConfigError("PRG seeds are 32 bytes, got 1", **srv.where("a"))

    monkeypatch.setattr(session_server, "finalize", unusable)
    train_round(fed, 1)
    out = fed.coord.wait_round(fed.run_id, 1, 0)
    assert out.status == "failed", out
    assert "silo a] PRG seeds are 32 bytes, got 1" in (out.reason or ""), out.reason


def test_a_silo_silent_at_a_level_is_recovered_and_leaves(fed: Fed) -> None:
    def c_vanishes(silo: str, task: Task) -> bool:
        level = task.hist.level if task.type == "hist" else None
        if silo != "c" or level is None:
            return False
        req = LevelRequest.from_json(level.encode())
        return (req.tree, req.depth) >= (0, 1)

    train_round(fed, 1, c_vanishes)
    assert fed.coord.wait_round(fed.run_id, 1, 0).status == "open"  # stuck waiting for c
    out = fed.coord.close_round(fed.run_id, 1)  # the deadline: c is a dropout
    drive(fed, 1)
    out = fed.coord.wait_round(fed.run_id, 1, 0)
    assert out.status == "aggregated", out
    states = {s.silo: s for s in out.silos}
    assert states["c"].state == "refused" and "recovered" in (states["c"].reason or "")
    model = fed.coord.download_model(fed.run_id, 1)
    assert model == expected(2, drop_at={"c": (0, 1)})  # the driver's drop: same trees
    check_native(model)
    (entry,) = aggregates(fed)
    assert [d["silos"] for d in entry["dropouts"]] == [["c"]]
    assert entry["recoveries"][0]["recovered"] == ["c"]
    assert entry["tree_restarts"] == 1
    assert entry["individual_updates_seen_by_service"] is False
    assert fed.silos["c"].next_task(wait_s=0, run_id=fed.run_id).type == "run_ended"  # type: ignore[union-attr]


def _snapshot(db_url: str, run_id: str) -> tuple[object, ...]:
    engine = create_engine(db_url)
    with engine.connect() as conn:
        row = conn.execute(select(HistRun).where(HistRun.run_id == run_id)).one()
        n = conn.scalar(select(func.count()).where(HistMessage.run_id == run_id))
    engine.dispose()
    return (row.phase, row.state_json, row.arrays, row.trees_json, n)


def test_bad_level_answers_are_refused_and_change_nothing(fed: Fed) -> None:
    fed.coord.open_round(fed.run_id, RoundOpen(round=1, kind="train", deadline_s=60))

    def until_depth_one(silo: str, task: Task) -> bool:
        level = task.hist.level if task.type == "hist" else None
        return level is not None and LevelRequest.from_json(level.encode()).depth == 1

    drive(fed, 1, until_depth_one)
    a = fed.silos["a"]
    task = a.next_task(wait_s=0, run_id=fed.run_id)
    assert task is not None and task.type == "hist" and task.hist.level is not None
    level = LevelRequest.from_json(task.hist.level.encode())
    request = AggregationRequest.from_bytes(a.hist_inbox(fed.run_id, task.hist.counter)[0])
    nodes = ",".join(str(c.node) for c in level.compute)
    before = _snapshot(fed.db_url, fed.run_id)

    def bad(counter: int, length: int) -> bytes:
        peers = {p: b"\0" * 60 for p in request.active if p != "a"}
        return SessionMasked.create(
            a.key, run_id=fed.run_id, round_num=counter, silo="a", b_commitment=b"\0" * 32,
            ciphertexts=peers, vector=np.zeros(length, dtype="<u8"),
        ).to_bytes()  # fmt: skip

    path = f"/v1/silo/runs/{fed.run_id}/hist/masked"
    query = f"?tree={level.tree}&depth={level.depth}"
    cases = {
        "wrong length": (bad(request.round_num, request.dim + 3), f"{query}&nodes={nodes}"),
        "unknown node": (bad(request.round_num, request.dim), f"{query}&nodes=97"),
        "wrong tree": (bad(request.round_num, request.dim), f"?tree=5&depth=1&nodes={nodes}"),
        "wrong counter": (bad(request.round_num + 4, request.dim), f"{query}&nodes={nodes}"),
        # both used to 500: SQLite overflowed on the counter, struct on the frame's length
        "counter past 64 bits": (bad(2**63, request.dim), f"{query}&nodes={nodes}"),
        "cut-short frame": (packing.MAGIC + b"\0", f"{query}&nodes={nodes}"),
    }
    for name, (body, q) in cases.items():
        with pytest.raises(ServiceRejected) as err:
            a.request("POST", path + q, body=body)
        assert err.value.status == 422, (name, err.value.detail)
        assert "silo 'a'" in err.value.detail or "silo a" in err.value.detail, err.value.detail
        assert _snapshot(fed.db_url, fed.run_id) == before, name
    # the silo's real answer is still taken and the round completes as the driver's
    drive(fed, 1)
    assert fed.coord.wait_round(fed.run_id, 1, 0).status == "aggregated"
    assert fed.coord.download_model(fed.run_id, 1) == expected(2)
    # refusals are counted (rejection_counts), never one ledger entry each
    assert "update_rejected" not in {e.kind for e in fed.coord.ledger(fed.run_id)}
