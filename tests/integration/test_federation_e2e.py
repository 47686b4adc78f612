"""The whole federation as real processes on 127.0.0.1: the aggregation service, four silo
agents (one per UCI hospital) and the coordinator's Prefect flow, over real HTTP.

One federation (`shared`) serves the tests that leave it intact, one run after another: the
agents' start and data validation are paid once. Switzerland's policy there allows only logistic
regression, so an MLP run shows a policy refusal while logistic-regression runs train all four.
Tests that break data, slow a silo down or need PostgreSQL start their own. Waits end when the
federation stops making progress (support.progress), not at a fixed deadline.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from sqlalchemy import create_engine, text
from support.fault_helpers import (
    HOSPITALS,
    MODEL,
    TRAINING,
    Federation,
    assert_every_model_is_its_round_mean,
    current_round,
    join,
    secagg_sent,
    start_federation,
    train,
    train_in_thread,
)

from schemas import tensors
from schemas.specs import ModelSpec, StrategySpec, param_shapes

# generous: a module's shared federation (processes, cold start) counts toward its first test,
# and on a loaded machine that alone can pass pytest's default 600 s; the waits inside fail
# sooner when the federation stops making progress
pytestmark = [pytest.mark.integration, pytest.mark.timeout(1800)]
N_FEATURES = MODEL.n_features
SWISS_POLICY = {"switzerland": 'allowed_models = ["logreg"]\nmax_rounds_per_run = 100'}


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory, prefect_api_url: str) -> Iterator[Federation]:
    fed = start_federation(tmp_path_factory.mktemp("e2e"), prefect_api_url, policy=SWISS_POLICY)
    try:
        yield fed
    finally:
        fed.stop()


def test_four_hospitals_train_a_model_end_to_end(
    shared: Federation, tmp_path: Path, prefect_api_url: str
) -> None:
    result = train(shared.urls, shared.token, tmp_path / "models", rounds=4)
    entries = shared.coord.ledger()
    keys = shared.coord.ledger_keys()
    _assert_lineage_verifies(entries, keys, shared.root, result["run_id"])
    rounds = result["rounds"]
    assert [r["kind"] for r in rounds] == ["train"] * 4 + ["evaluate"]
    assert all(sorted(r["contributors"]) == list(HOSPITALS) for r in rounds)
    losses = [r["loss"] for r in rounds]
    assert losses[-1] < losses[0], losses  # the federation learned something
    assert rounds[-1]["accuracy"] > 0.7
    saved = Path(result["model_path"]).read_bytes()
    assert hashlib.sha256(saved).hexdigest() == result["model_sha256"]
    tensors.decode_expected(saved, param_shapes(MODEL))
    # every silo recorded its part as one Prefect flow run, named after the silo and the run
    names = [f"{silo}-{result['run_id']}" for silo in HOSPITALS]
    with httpx.Client(base_url=prefect_api_url) as prefect:
        runs = prefect.post(
            "/flow_runs/filter", json={"flow_runs": {"name": {"any_": names}}}
        ).json()
    assert len(runs) == 4 and all(r["state_type"] == "COMPLETED" for r in runs)


def test_policy_refusal_is_shown_and_the_run_goes_on(shared: Federation, tmp_path: Path) -> None:
    mlp = ModelSpec(kind="mlp", n_features=N_FEATURES, hidden=(8,))
    result = train(shared.urls, shared.token, tmp_path / "models", rounds=2, model=mlp)
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
    """SQLite cases use the shared federation; PostgreSQL needs one on its own database."""
    if backend == "postgres":
        fed = start_federation(tmp_path, prefect_api_url, request.getfixturevalue("fresh_pg_url"))
    else:
        fed = request.getfixturevalue("shared")
    rounds = 6
    thread, outcome = train_in_thread(
        fed.urls,
        fed.token,
        tmp_path / "models",
        rounds,
        strategy=StrategySpec(name="fedavg"),
        secure=secure,
    )

    def in_round_3() -> bool:
        assert thread.is_alive(), f"the run ended before round 3: {outcome}"
        runs = fed.coord.list_runs("heart", limit=1)
        return bool(
            runs and runs[0].status == "running" and (runs[0].latest_model_version or 0) >= 2
        )

    try:
        fed.wait(in_round_3, "the run to reach round 3")
        fed.services[0].kill9()  # mid-round: round 3 is open and silos are training or submitting
        fed.restart_service()
        result = join(thread, outcome, fed)
    finally:
        if backend == "postgres":
            fed.stop()
    assert all(len(r["contributors"]) == 4 for r in result["rounds"])
    if secure:  # individual updates are masked: check each round counted each silo once
        engine = create_engine(fed.db_url)
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
    assert_every_model_is_its_round_mean(fed.db_url, result["run_id"], rounds)


def test_silo_with_bad_data_declines_and_the_run_goes_on(
    tmp_path: Path, prefect_api_url: str
) -> None:
    fed = start_federation(tmp_path, prefect_api_url, break_data="hungary")
    try:
        result = train(fed.urls, fed.token, tmp_path / "models", rounds=2)
        entries = fed.coord.ledger(result["run_id"])
    finally:
        fed.stop()
    for record in result["rounds"]:
        assert "hungary" not in record["contributors"]
        # it declined each round (cause: its data), naming the column its export lost
        assert record["declined"]["hungary"].startswith("data:"), record
        assert "age" in record["declined"]["hungary"]
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
    quantization bound (training as `support.fault_helpers.train` sets it)."""
    import sqlite3

    from silos.config import load_silo_config
    from silos.local_data import prepare_local_data
    from silos.trainer import train_local

    fed = start_federation(tmp_path, prefect_api_url, slow="switzerland")
    survivors = ["cleveland", "hungary", "va_long_beach"]
    # an upper bound only: the test closes the stage itself once the survivors have answered
    thread, outcome = train_in_thread(
        fed.urls, fed.token, tmp_path / "models", rounds=1, min_silos=3, deadline_s=900
    )

    def victim_shared() -> tuple[str, int] | None:
        now = current_round(fed)
        if now is None or not secagg_sent(fed.db_url, now[0], now[1], "share", "switzerland"):
            return None
        return now[0], now[1]

    try:
        run_id, number = fed.wait(victim_shared, "switzerland to share its keys", poll_s=0.01)
        fed.agents["switzerland"].kill9()
        fed.wait(
            lambda: all(secagg_sent(fed.db_url, run_id, number, "masked", s) for s in survivors),
            "the survivors' masked updates",
        )
        # what the round's deadline would do, without waiting for it: close the masked stage,
        # so the service asks the survivors to unmask without Switzerland
        fed.coord.close_round(run_id, number)

        def evaluation_awaits_only_the_victim() -> tuple[str, int] | bool | None:
            # the run's evaluation round waits for Switzerland too: the deadline would close it
            if not thread.is_alive():
                return True
            now = current_round(fed)
            if now is None or now[1] == number or now[3] != "open":
                return None
            rnd = next(r for r in fed.coord.rounds(run_id) if r.round == now[1])
            return (run_id, now[1]) if rnd.awaited == ["switzerland"] else None

        evaluation = fed.wait(evaluation_awaits_only_the_victim, "the survivors' evaluations")
        if evaluation is not True:
            fed.coord.close_round(*evaluation)
        result = join(thread, outcome, fed)
    finally:
        fed.stop()
    db = tmp_path / "service" / "service.db"
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
    for name in survivors:
        data = prepare_local_data(load_silo_config(tmp_path / "silos" / name / "silo.toml"))
        trained = train_local(
            MODEL,
            start,
            data.X_train,
            data.y_train,
            TRAINING.model_copy(update={"seed": TRAINING.seed + 1}),
        )
        for acc, new, old in zip(weighted, trained.params, start, strict=True):
            acc += len(data.y_train) * (new - old)
        total += len(data.y_train)
    for g, w0, acc in zip(got, start, weighted, strict=True):
        np.testing.assert_allclose(g, w0 + acc / total, atol=1e-5)


def _assert_lineage_verifies(entries, keys, root: Path, run_id: str) -> None:  # type: ignore[no-untyped-def]
    """The service's ledger verifies, and every silo's own copy matches it."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    from schemas.ledger_verify import cross_check, directory_artifact_checker, verify_chain
    from silos.lineage_copy import load_records

    public = {k: Ed25519PublicKey.from_public_bytes(bytes.fromhex(v)) for k, v in keys.items()}
    report = verify_chain(entries, public, directory_artifact_checker(root / "service"))
    assert report.ok, report
    kinds = [e.kind for e in entries if e.run_id == run_id]
    assert kinds[0] == "run_started" and kinds[-1] == "run_finished"
    for name in HOSPITALS:
        records = load_records(root / "silos" / name / "workspace")
        kinds_here = sorted(r.statement.kind for r in records if r.statement.run_id == run_id)
        # per round: a signed validation result; per training round: an acknowledged update
        assert kinds_here == ["update_accepted"] * 4 + ["validation_result"] * 5
        assert cross_check(records, entries, service_public_key=public["service"]).ok
