"""Silo presence (readiness, last seen, online) and cancelling a run, through the real service
over HTTP on SQLite and PostgreSQL; the 0007 -> 0008 migration on both backends."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa
from alembic import command
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from support.live_service import coordinator, enrolled_silo, service_in_thread
from support.validation import validate_all
from typer.testing import CliRunner

from aggregation.service.migrate import alembic_config, upgrade
from aggregation.service.tables import utcnow
from flows.cli import app
from flows.service_client import CoordinatorClient
from schemas import tensors
from schemas.ledger_verify import directory_artifact_checker, verify_chain
from schemas.specs import ModelSpec, RunSpec, SecureAggregationSpec, param_shapes
from schemas.wire import ReadyIn, RoundOpen, RunCreate, RunFinish, SiloOut
from silos.client import SiloClient
from silos.client_errors import ServiceRejected

MODEL = ModelSpec(kind="logreg", n_features=3)
SHAPES = param_shapes(MODEL)
SPEC = RunSpec(
    federation="f",
    dataset="toy",
    model=MODEL,
    rounds=3,
    min_silos=2,
    secure_aggregation=SecureAggregationSpec(enabled=False),
)
READY = ReadyIn(
    contract="heart", contract_version="1.2", data_sha256="ab" * 32, validated=True, detail="ok"
)


def _listed(coord: CoordinatorClient, name: str) -> SiloOut:
    return next(s for s in coord.silos("f") if s.name == name)


def test_ready_last_seen_and_online(sqlite_url: str, tmp_path: Path) -> None:
    with service_in_thread(tmp_path / "svc", sqlite_url) as url:
        coord = coordinator(url)
        coord.create_federation("f")
        a, b = (enrolled_silo(url, coord, "f", n) for n in ("a", "b"))
        seen = _listed(coord, "a").last_seen_at
        me = a.whoami()  # an authenticated request: a is seen now
        assert me.last_seen_at is not None and me.online and me.ready is None
        if seen is not None:
            assert me.last_seen_at >= seen
        first_seen = me.last_seen_at
        a.whoami()  # within the 30 s resolution: no write, the stored value stands
        assert _listed(coord, "a").last_seen_at == first_seen

        a.ready(READY)
        listed = _listed(coord, "a")
        assert listed.ready == READY and listed.ready_at is not None and listed.online
        assert _listed(coord, "b").ready is None
        with pytest.raises(ServiceRejected) as err:  # a NUL is not text
            a.request(
                "POST",
                "/v1/silo/ready",
                body=READY.model_dump_json().replace('"ok"', '"o\\u0000k"').encode(),
                content_type="application/json",
            )
        assert err.value.status == 422 and "ReadyIn" in err.value.detail

        # a silo last seen two minutes ago is not online (90 s)
        engine = sa.create_engine(sqlite_url)
        with engine.begin() as conn:
            conn.execute(
                sa.text("UPDATE silos SET last_seen_at = :t WHERE name = 'a'"),
                {"t": utcnow() - timedelta(minutes=2)},
            )
        engine.dispose()
        stale = _listed(coord, "a")
        assert not stale.online and stale.last_seen_at is not None
        a.whoami()
        assert _listed(coord, "a").online


def _started_run(coord: CoordinatorClient, silos: dict[str, SiloClient]) -> str:
    run = coord.create_run(RunCreate(spec=SPEC))
    zeros = {n: np.zeros(s, np.float32) for n, s in SHAPES}
    coord.put_initial_model(run.run_id, tensors.encode(zeros))
    coord.start_run(run.run_id)
    coord.open_round(run.run_id, RoundOpen(round=1, deadline_s=600))
    validate_all(silos, run.run_id)
    return run.run_id


def _update(client: SiloClient, run_id: str, round_: int) -> None:
    meta = {"run_id": run_id, "round": str(round_), "n_examples": "10"}
    arrays = {n: np.full(s, 0.1, np.float32) for n, s in SHAPES}
    client.submit_update(run_id, round_, tensors.encode(arrays, meta))


def test_cancel_a_running_run(db_url: str, tmp_path: Path) -> None:
    with service_in_thread(tmp_path / "svc", db_url) as url:
        coord = coordinator(url)
        coord.create_federation("f")
        silos = {n: enrolled_silo(url, coord, "f", n) for n in ("a", "b")}
        run_id = _started_run(coord, silos)
        _update(silos["a"], run_id, 1)
        payload = {
            "silo": "b",
            "run_id": run_id,
            "round": 1,
            "scope": "round",
            "cause": "privacy_budget",
            "reason": "epsilon spent",
        }
        silos["b"].submit_statement(run_id, "decline", payload)

        out = coord.cancel_run(run_id, "wrong cohort selected")
        assert out.status == "cancelled" and out.reason == "wrong cohort selected"
        [rnd] = coord.rounds(run_id)
        assert rnd.status == "cancelled" and "wrong cohort selected" in (rnd.reason or "")
        assert rnd.closed_at is not None and rnd.awaited == []
        for client in silos.values():
            task = client.next_task(wait_s=0, run_id=run_id)
            assert task is not None and task.type == "run_ended"
            assert task.run_status == "cancelled"

        late = pytest.raises(ServiceRejected, _update, silos["b"], run_id, 1).value
        assert late.status == 409 and run_id in late.detail and "cancelled" in late.detail
        with pytest.raises(ServiceRejected) as err:
            coord.open_round(run_id, RoundOpen(round=2, deadline_s=60))
        assert err.value.status == 409
        assert run_id in err.value.detail and "cancelled" in err.value.detail

        again = coord.cancel_run(run_id, "a second time")  # idempotent: the first one stands
        assert again.status == "cancelled" and again.reason == "wrong cohort selected"
        entries = coord.ledger(run_id)
        cancels = [e for e in entries if e.kind == "run_cancelled"]
        assert len(cancels) == 1 and cancels[0].author == "service"
        assert '"reason":"wrong cohort selected"' in cancels[0].payload
        assert '"round":1' in cancels[0].payload
        # finishing it afterwards (a coordinator's cleanup) changes nothing
        assert coord.finish_run(run_id, RunFinish(status="failed")).status == "cancelled"

        finished = _started_run(coord, silos)
        coord.finish_run(finished, RunFinish(status="finished"))
        with pytest.raises(ServiceRejected) as err:
            coord.cancel_run(finished, "too late")
        assert err.value.status == 409 and "finished" in err.value.detail

        everything = coord.ledger()
        keys = {
            k: Ed25519PublicKey.from_public_bytes(bytes.fromhex(v))
            for k, v in coord.ledger_keys().items()
        }
        report = verify_chain(everything, keys, directory_artifact_checker(tmp_path / "svc"))
        assert report.ok, report
        assert {"decline", "run_cancelled"} <= {e.kind for e in everything}
        auth = ["--service-url", url, "--token", "test-admin-token"]
        verify = CliRunner().invoke(app, ["lineage", "verify", *auth])
        assert verify.exit_code == 0, verify.output


def test_migration_from_0007_keeps_silos_and_adds_presence(db_url: str, tmp_path: Path) -> None:
    engine = sa.create_engine(db_url)
    cfg = alembic_config(db_url)
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "0007")
    with engine.begin() as conn:
        conn.execute(
            sa.text("INSERT INTO federations (name, description, created_at) VALUES ('f', '', :t)"),
            {"t": utcnow()},
        )
        conn.execute(
            sa.text(
                "INSERT INTO silos (federation, name, public_key, status, enrolled_at) "
                "VALUES ('f', 'old', :k, 'approved', :t)"
            ),
            {"k": "00" * 32, "t": utcnow()},
        )
    upgrade(engine)
    columns = {c["name"] for c in sa.inspect(engine).get_columns("silos")}
    assert {"last_seen_at", "ready_at", "ready_json"} <= columns
    assert "cause" in {c["name"] for c in sa.inspect(engine).get_columns("contributions")}
    engine.dispose()
    with service_in_thread(tmp_path / "svc", db_url) as url:  # the service starts on it
        [old] = coordinator(url).silos("f")
        assert old.name == "old" and old.last_seen_at is None and not old.online
        assert old.ready is None


def test_round_tasks_name_the_coordinators_flow_run(sqlite_url: str, tmp_path: Path) -> None:
    """Silo flow runs link to the coordinator's by a tag: every round task carries its id."""
    with service_in_thread(tmp_path / "svc", sqlite_url) as url:
        coord = coordinator(url)
        coord.create_federation("f")
        silos = {n: enrolled_silo(url, coord, "f", n) for n in ("a", "b")}
        run = coord.create_run(RunCreate(spec=SPEC, prefect_flow_run_id="0f1e2d3c-coordinator"))
        zeros = {n: np.zeros(s, np.float32) for n, s in SHAPES}
        coord.put_initial_model(run.run_id, tensors.encode(zeros))
        coord.start_run(run.run_id)
        coord.open_round(run.run_id, RoundOpen(round=1, deadline_s=600))
        task = silos["a"].next_task(wait_s=0, run_id=run.run_id)
        assert task is not None and task.type == "train"
        assert task.coordinator_flow_run_id == "0f1e2d3c-coordinator"
