"""Secure sums need two silos: a run that would have one is refused at creation, and a secure
round whose roster has fewer than two fails with its reason, never as a 500 on task polls."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import select
from support.live_service import coordinator, enrolled_silo, service_in_thread

from aggregation.service.db import make_engine, make_sessionmaker, transaction
from aggregation.service.runs import secure_sums
from aggregation.service.tables import Round
from flows.service_client import CoordinatorClient
from schemas import tensors
from schemas.specs import ModelSpec, RunSpec, SecureAggregationSpec, param_shapes
from schemas.wire import RoundOpen, RunCreate
from silos.client_errors import Conflict

MODEL = ModelSpec(kind="logreg", n_features=3)


def _spec(federation: str, **update: object) -> RunSpec:
    spec = RunSpec(federation=federation, dataset="toy", model=MODEL, rounds=2, min_silos=1)
    return RunSpec.model_validate({**spec.model_dump(), **update})


def _started(coord: CoordinatorClient, spec: RunSpec) -> str:
    run = coord.create_run(RunCreate(spec=spec))
    zeros = {n: np.zeros(s, np.float32) for n, s in param_shapes(MODEL)}
    coord.put_initial_model(run.run_id, tensors.encode(zeros))
    coord.start_run(run.run_id)
    return run.run_id


def test_a_secure_run_of_one_silo_is_refused_at_creation(sqlite_url: str, tmp_path: Path) -> None:
    with service_in_thread(tmp_path / "svc", sqlite_url) as url:
        coord = coordinator(url)
        coord.create_federation("solo")
        enrolled_silo(url, coord, "solo", "a")
        with pytest.raises(Conflict) as err:
            coord.create_run(RunCreate(spec=_spec("solo")))
        detail = err.value.detail
        assert "federation 'solo' has only 1 participating silo (a)" in detail
        assert "secure aggregation needs at least 2" in detail
        assert "--min-silos 2" in detail and "secure_aggregation.enabled=false" in detail
        assert coord.list_runs("solo") == []
        plain = SecureAggregationSpec(enabled=False)
        # updates in the clear: one silo may train alone
        assert coord.create_run(RunCreate(spec=_spec("solo", secure_aggregation=plain))).run_id
        # two silos, one of them revoked: the same refusal
        enrolled_silo(url, coord, "solo", "b")
        coord.request("POST", "/v1/federations/solo/silos/b/revoke")
        with pytest.raises(Conflict) as err:
            coord.create_run(RunCreate(spec=_spec("solo")))
        assert "has only 1 participating silo (a)" in err.value.detail


def test_what_is_securely_summed() -> None:
    plain = SecureAggregationSpec(enabled=False)
    assert secure_sums(_spec("f")) is not None
    assert secure_sums(_spec("f", secure_aggregation=plain)) is None
    # federation statistics are securely summed, whatever the updates are
    stats = secure_sums(_spec("f", secure_aggregation=plain, federation_statistics=True))
    assert stats is not None and stats[1] == "federation_statistics=false"
    trees = {"kind": "xgboost", "mode": "bagging", "n_features": 3}
    assert secure_sums(_spec("f", model=None, trees=trees, secure_aggregation=plain)) is None
    hist = {**trees, "mode": "secure-hist"}
    assert secure_sums(_spec("f", model=None, trees=hist, secure_aggregation=plain)) is not None


def test_a_secure_round_left_with_one_silo_fails_at_open(sqlite_url: str, tmp_path: Path) -> None:
    with service_in_thread(tmp_path / "svc", sqlite_url) as url:
        coord = coordinator(url)
        coord.create_federation("f")
        a, b = (enrolled_silo(url, coord, "f", n) for n in ("a", "b"))
        run_id = _started(coord, _spec("f", min_silos=1))
        b.refuse(run_id, "policy: no such runs here")  # before round 1: its roster is a alone
        rnd = coord.open_round(run_id, RoundOpen(round=1, deadline_s=60))
        assert rnd.status == "failed"
        assert rnd.reason is not None
        assert (
            f"round 1 of run {run_id}: secure aggregation needs at least 2 active silos, "
            "the run has 1 (a)"
        ) in rnd.reason
        assert a.next_task(wait_s=0, run_id=run_id) is None  # a poll answers, no 500
        failed = [e for e in coord.ledger(run_id=run_id) if e.kind == "round_failed"]
        assert len(failed) == 1 and "needs at least 2 active silos" in failed[0].payload


def test_a_task_poll_fails_a_round_whose_roster_is_one(sqlite_url: str, tmp_path: Path) -> None:
    """A round opened with a roster of one (before creation and opening refused it) fails at
    the silo's poll with the protocol's reason; the poll itself answers (no 500)."""
    with service_in_thread(tmp_path / "svc", sqlite_url) as url:
        coord = coordinator(url)
        coord.create_federation("f")
        a, _ = (enrolled_silo(url, coord, "f", n) for n in ("a", "b"))
        run_id = _started(coord, _spec("f"))
        coord.open_round(run_id, RoundOpen(round=1, deadline_s=60))
        engine = make_engine(sqlite_url)
        with transaction(make_sessionmaker(engine)) as s:
            rnd = s.scalar(select(Round).where(Round.run_id == run_id, Round.number == 1))
            assert rnd is not None
            doc = json.loads(rnd.roster_json or "{}")
            rnd.roster_json = json.dumps({**doc, "silos": ["a"]})
        engine.dispose()
        assert a.next_task(wait_s=0, run_id=run_id) is None
        rnd_out = coord.wait_round(run_id, 1, 0)
        assert rnd_out.status == "failed"
        assert rnd_out.reason is not None
        assert f"round 1 of run {run_id} cannot run" in rnd_out.reason
        assert "roster needs >= 2 distinct silos" in rnd_out.reason
