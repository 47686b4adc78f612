"""The whole federation as real processes on 127.0.0.1: the aggregation service, four silo
agents (one per UCI hospital) and the coordinator's Prefect flow, over real HTTP."""

from __future__ import annotations

import hashlib
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from sqlalchemy import create_engine, text
from support.fault_helpers import (
    MODEL,
    assert_every_model_is_its_round_mean,
    start_federation,
    train,
)

from flows.coordinator import federated_training
from flows.processes import Proc, start_service
from schemas import tensors
from schemas.specs import ModelSpec, StrategySpec, TrainingSpec, param_shapes

pytestmark = pytest.mark.integration
N_FEATURES = MODEL.n_features


def _federation(
    tmp_path: Path,
    prefect_api_url: str,
    database_url: str = "",
    policy=None,  # type: ignore[no-untyped-def]
    break_data: str | None = None,
    slow: str | None = None,
):
    fed = start_federation(
        tmp_path, prefect_api_url, database_url, policy=policy, break_data=break_data, slow=slow
    )
    return fed.services[0], fed.urls[0], fed.token, fed.coord, list(fed.agents.values())


def _stop(procs: list[Proc]) -> None:
    for p in procs:
        p.stop()


def _train(
    url: str,
    token: str,
    out: Path,
    rounds: int,
    strategy: StrategySpec | None = None,
    model: ModelSpec = MODEL,
    min_silos: int = 3,
    secure: bool = True,
) -> dict:  # type: ignore[type-arg]
    return train(
        [url],
        token,
        out,
        rounds,
        strategy=strategy,
        model=model,
        min_silos=min_silos,
        secure=secure,
    )


def test_four_hospitals_train_a_model_end_to_end(tmp_path: Path, prefect_api_url: str) -> None:
    service, url, token, coord, agents = _federation(tmp_path, prefect_api_url)
    try:
        result = _train(url, token, tmp_path / "models", rounds=4)
        entries = coord.ledger()
        keys = coord.ledger_keys()
    finally:
        _stop([*agents, service])
    _assert_lineage_verifies(entries, keys, tmp_path, result["run_id"])
    run = coord_run = None
    rounds = result["rounds"]
    assert [r["kind"] for r in rounds] == ["train"] * 4 + ["evaluate"]
    assert all(
        sorted(r["contributors"]) == ["cleveland", "hungary", "switzerland", "va_long_beach"]
        for r in rounds
    )
    losses = [r["loss"] for r in rounds]
    assert losses[-1] < losses[0], losses  # the federation learned something
    assert rounds[-1]["accuracy"] > 0.7
    saved = Path(result["model_path"]).read_bytes()
    assert hashlib.sha256(saved).hexdigest() == result["model_sha256"]
    tensors.decode_expected(saved, param_shapes(MODEL))
    # every silo recorded its part as one Prefect flow run
    with httpx.Client(base_url=prefect_api_url) as prefect:
        runs = prefect.post(
            "/flow_runs/filter", json={"flow_runs": {"name": {"any_": [result["run_id"]]}}}
        ).json()
    assert len(runs) == 4 and all(r["state_type"] == "COMPLETED" for r in runs)
    del run, coord_run


def test_policy_refusal_is_shown_and_the_run_goes_on(tmp_path: Path, prefect_api_url: str) -> None:
    policy = {"switzerland": 'allowed_models = ["logreg"]\nmax_rounds_per_run = 100'}
    service, url, token, coord, agents = _federation(tmp_path, prefect_api_url, policy=policy)
    mlp = ModelSpec(kind="mlp", n_features=N_FEATURES, hidden=(8,))
    try:
        result = _train(url, token, tmp_path / "models", rounds=2, model=mlp)
    finally:
        _stop([*agents, service])
    first = result["rounds"][0]
    assert sorted(first["contributors"]) == ["cleveland", "hungary", "va_long_beach"]
    assert "allows models ['logreg']" in first["refused"]["switzerland"]


@pytest.mark.parametrize(
    ("backend", "secure"),
    [
        ("sqlite", False),
        pytest.param("postgres", False, marks=pytest.mark.postgres),
        ("sqlite", True),
    ],
)
def test_service_killed_mid_round_loses_and_duplicates_nothing(
    tmp_path: Path, prefect_api_url: str, backend: str, secure: bool, request: pytest.FixtureRequest
) -> None:
    db = request.getfixturevalue("fresh_pg_url") if backend == "postgres" else ""
    service, url, token, coord, agents = _federation(tmp_path, prefect_api_url, db)
    port = int(url.rsplit(":", 1)[1])
    outcome: dict[str, object] = {}
    rounds = 6
    strategy = StrategySpec(name="fedavg")
    thread = threading.Thread(
        target=lambda: outcome.update(
            result=_train(
                url, token, tmp_path / "models", rounds=rounds, strategy=strategy, secure=secure
            )
        ),
        daemon=True,
    )
    thread.start()
    try:
        deadline = time.monotonic() + 180
        while True:
            assert time.monotonic() < deadline and thread.is_alive(), "run never reached round 3"
            runs = coord.list_runs("heart", limit=1)
            if runs and runs[0].status == "running" and (runs[0].latest_model_version or 0) >= 2:
                break
            time.sleep(0.05)
        service.kill9()  # mid-round: round 3 is open and silos are training or submitting
        time.sleep(1.0)
        service = start_service(tmp_path / "service", port, db)
        thread.join(300)
        assert not thread.is_alive() and "result" in outcome, outcome
    finally:
        _stop([*agents, service])
    result = outcome["result"]
    assert isinstance(result, dict)
    assert all(len(r["contributors"]) == 4 for r in result["rounds"])
    if secure:  # individual updates are masked: check each round counted each silo once
        engine = create_engine(f"sqlite:///{tmp_path / 'service' / 'service.db'}")
        with engine.connect() as conn:
            rows = conn.execute(
                text(
                    "SELECT round, count(*) FROM contributions WHERE run_id = :r "
                    "AND kind = 'update' GROUP BY round"
                ),
                {"r": result["run_id"]},
            ).all()
        engine.dispose()
        assert dict(rows) == {r: 4 for r in range(1, rounds + 1)}
        return
    assert_every_model_is_its_round_mean(
        db or f"sqlite:///{tmp_path / 'service' / 'service.db'}", result["run_id"], rounds
    )


def _assert_lineage_verifies(entries, keys, tmp_path: Path, run_id: str) -> None:  # type: ignore[no-untyped-def]
    """The service's ledger verifies, and every silo's own copy matches it."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    from schemas.ledger_verify import cross_check, directory_artifact_checker, verify_chain
    from silos.lineage_copy import load_records

    public = {k: Ed25519PublicKey.from_public_bytes(bytes.fromhex(v)) for k, v in keys.items()}
    report = verify_chain(entries, public, directory_artifact_checker(tmp_path / "service"))
    assert report.ok, report
    kinds = [e.kind for e in entries if e.run_id == run_id]
    assert kinds[0] == "run_started" and kinds[-1] == "run_finished"
    for name in ("cleveland", "hungary", "switzerland", "va_long_beach"):
        records = load_records(tmp_path / "silos" / name / "workspace")
        kinds_here = sorted(r.statement.kind for r in records)
        # per round: a signed validation result; per training round: an acknowledged update
        assert kinds_here == ["update_accepted"] * 4 + ["validation_result"] * 5
        assert cross_check(records, entries, service_public_key=public["service"]).ok


def test_silo_with_bad_data_sits_out_and_the_run_goes_on(
    tmp_path: Path, prefect_api_url: str
) -> None:
    service, url, token, coord, agents = _federation(
        tmp_path, prefect_api_url, break_data="hungary"
    )
    try:
        result = _train(url, token, tmp_path / "models", rounds=2)
        entries = coord.ledger(result["run_id"])
    finally:
        _stop([*agents, service])
    for record in result["rounds"]:
        assert "hungary" not in record["contributors"]
        assert "age" in record["sat_out"]["hungary"]
    validations = [e for e in entries if e.kind == "validation_result"]
    by_author = {e.author: e.payload for e in validations}
    assert '"success":false' in by_author["silo:hungary"]
    assert '"success":true' in by_author["silo:cleveland"]
    assert len(validations) == 4 * 3  # every silo, every round (2 training + 1 evaluation)
    assert (tmp_path / "silos" / "hungary" / "workspace" / "data_docs").exists()


def test_silo_killed_after_sharing_keys_is_recovered_by_secure_aggregation(
    tmp_path: Path, prefect_api_url: str
) -> None:
    """Four agents over HTTP; Switzerland's agent is kill -9'ed after it shared its keys. The
    round completes from the three survivors and equals their plain FedAvg within the
    quantization bound."""
    import sqlite3

    from silos.config import load_silo_config
    from silos.local_data import prepare_local_data
    from silos.trainer import train_local

    service, url, token, coord, agents = _federation(tmp_path, prefect_api_url, slow="switzerland")
    victim = next(a for a in agents if "switzerland" in a.name)
    outcome: dict[str, object] = {}
    training = TrainingSpec(local_epochs=2, lr=0.1, batch_size=32)
    token_file = tmp_path / "admin.token"  # the flow reads its token from a 0600 file
    token_file.touch(mode=0o600)
    token_file.write_text(token)
    thread = threading.Thread(
        target=lambda: outcome.update(
            result=federated_training(
                service_urls=[url],
                admin_token_file=str(token_file),
                federation="heart",
                dataset="heart_disease",
                model=MODEL,
                training=training,
                rounds=1,
                min_silos=3,
                round_deadline_s=45,
                output_dir=str(tmp_path / "models"),
            )
        ),
        daemon=True,
    )
    thread.start()
    db = tmp_path / "service" / "service.db"
    try:
        deadline = time.monotonic() + 180
        while True:
            assert time.monotonic() < deadline and thread.is_alive(), victim.log_tail()
            with sqlite3.connect(db) as conn:
                shared = conn.execute(
                    "SELECT count(*) FROM secagg_messages WHERE stage = 'share' "
                    "AND silo = 'switzerland'"
                ).fetchone()[0]
            if shared:
                victim.kill9()
                break
            time.sleep(0.01)
        thread.join(240)
        assert "result" in outcome, outcome
    finally:
        _stop([*agents, service])
    result = outcome["result"]
    assert isinstance(result, dict)
    first = result["rounds"][0]
    assert sorted(first["contributors"]) == ["cleveland", "hungary", "va_long_beach"]
    with sqlite3.connect(db) as conn:
        kinds = [k for (k,) in conn.execute("SELECT kind FROM ledger_entries")]
        v0, v1 = (
            conn.execute("SELECT payload FROM models WHERE version = ?", (v,)).fetchone()[0]
            for v in (0, 1)
        )
    assert "dropout" in kinds and "recovery" in kinds
    shapes = param_shapes(MODEL)
    start = tensors.decode_expected(v0, shapes)[0]
    got = tensors.decode_expected(v1, shapes)[0]
    # the survivors' own deltas, recomputed exactly as their agents did (deterministic training)
    weighted, total = [np.zeros_like(a, dtype=np.float64) for a in start], 0
    for name in ("cleveland", "hungary", "va_long_beach"):
        data = prepare_local_data(load_silo_config(tmp_path / "silos" / name / "silo.toml"))
        trained = train_local(
            MODEL,
            start,
            data.X_train,
            data.y_train,
            training.model_copy(update={"seed": training.seed + 1}),
        )
        for acc, new, old in zip(weighted, trained.params, start, strict=True):
            acc += len(data.y_train) * (new - old)
        total += len(data.y_train)
    for g, w0, acc in zip(got, start, weighted, strict=True):
        np.testing.assert_allclose(g, w0 + acc / total, atol=1e-5)
