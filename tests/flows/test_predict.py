"""`fedsilo predict` against a real aggregation service (uvicorn in a thread, SQLite).

Each run is finished by hand right after it starts, so its final model is the initial one the
test put there: random PyTorch weights, or an XGBoost model trained here on the encoded rows.
New rows are UCI Cleveland patients without the target; predictions are compared with a numpy
(or XGBoost) reference on the rows the contract's pipeline encodes.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from support.live_service import (
    coordinator,
    enrolled_silo,
    publish_shipped_contract,
    service_in_thread,
)
from typer.testing import CliRunner

from flows.cli import app
from flows.cli.errors import CANCELLED, FAILED, USAGE
from flows.model_registry import RunModel
from flows.predict import PredictError, run_pipeline, run_statistics
from flows.service_client import CoordinatorClient
from schemas import tensors
from schemas.contracts.loader import load_contract
from schemas.contracts.stats import FederationStats
from schemas.specs import RunSpec, SecureAggregationSpec, model_spec_for_contract, param_shapes
from schemas.tree_params import TreeSpec
from schemas.wire import RunCreate, RunFinish
from silos.client_errors import NotFound
from silos.demo_data import heart_disease_silos
from silos.features import FeaturePipeline
from silos.federated_stats import local_moments

TOKEN = "test-admin-token"
CONTRACT = load_contract("heart_disease")
PIPELINE = FeaturePipeline.from_contract(CONTRACT)
LOGREG = model_spec_for_contract("logreg", PIPELINE.n_features, CONTRACT)


@dataclass
class Hub:
    url: str
    coord: CoordinatorClient
    db: Path
    rows: pd.DataFrame  # new rows: no target column


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hub]:
    root = tmp_path_factory.mktemp("predict")
    db = root / "service.db"
    with service_in_thread(root / "svc", f"sqlite:///{db}") as url:
        coord = coordinator(url)
        coord.create_federation("heart")
        publish_shipped_contract(coord, "heart", "heart_disease")
        for name in ("a", "b"):
            enrolled_silo(url, coord, "heart", name)
        rows = heart_disease_silos()["cleveland"].head(40).drop(columns=["num"])
        yield Hub(url, coord, db, rows.reset_index(drop=True))


def _finished_run(hub: Hub, initial: bytes, **spec: object) -> str:
    """A run whose final model is `initial`: started, then finished at once."""
    body = RunSpec(
        federation="heart",
        dataset="heart_disease",
        rounds=1,
        min_silos=1,
        secure_aggregation=SecureAggregationSpec(enabled=False),
        **spec,  # type: ignore[arg-type]
    )
    run = hub.coord.create_run(RunCreate(spec=body))
    hub.coord.put_initial_model(run.run_id, initial)
    hub.coord.start_run(run.run_id)
    hub.coord.finish_run(run.run_id, RunFinish(status="finished", reason="done"))
    return run.run_id


def _logreg_weights(seed: int) -> tuple[bytes, np.ndarray, float]:
    rng = np.random.default_rng(seed)
    arrays = {n: rng.normal(size=s).astype(np.float32) for n, s in param_shapes(LOGREG)}
    return tensors.encode(arrays), arrays["layers.0.weight"][0], float(arrays["layers.0.bias"][0])


@pytest.fixture(scope="module")
def logreg_run(hub: Hub) -> tuple[str, np.ndarray, float]:
    payload, weight, bias = _logreg_weights(3)
    return _finished_run(hub, payload, model=LOGREG), weight, bias


def _predict(hub: Hub, run_id: str, data: Path, out: Path, *extra: str):  # type: ignore[no-untyped-def]
    args = ["predict", run_id[:12], "--data", str(data), "--out", str(out), *extra]
    wide = {"COLUMNS": "500", "TERMINAL_WIDTH": "500"}  # a long tmp path stays on one line
    return CliRunner().invoke(app, [*args, "--service-url", hub.url, "--token", TOKEN], env=wide)


def _csv(frame: pd.DataFrame, path: Path) -> Path:
    frame.to_csv(path, index=False)
    return path


def test_pytorch_predictions_are_the_models_outputs_on_the_encoded_rows(
    hub: Hub, logreg_run: tuple[str, np.ndarray, float], tmp_path: Path
) -> None:
    run_id, weight, bias = logreg_run
    data, out = _csv(hub.rows, tmp_path / "new.csv"), tmp_path / "p.csv"
    done = _predict(hub, run_id, data, out, "--keep", "id")
    assert done.exit_code == 0, done.output
    X = PIPELINE.encode(hub.rows).astype(np.float64)
    expected = 1.0 / (1.0 + np.exp(-(X @ weight + bias)))  # numpy reference, not torch
    got = pd.read_csv(out)
    assert list(got.columns) == ["id", "probability", "label"]
    np.testing.assert_allclose(got["probability"], expected, rtol=1e-5, atol=1e-6)
    assert (got["label"] == (expected >= 0.5)).all() and (got["id"] == hub.rows["id"]).all()
    assert 0 < got["label"].sum() < len(got)  # both labels: a constant would pass too easily
    line = " ".join(done.output.split())
    assert f"predicted 40 rows of {data} with run {run_id} model v0 (logreg, sha256" in line


def test_the_order_of_the_columns_does_not_change_the_predictions(
    hub: Hub, logreg_run: tuple[str, np.ndarray, float], tmp_path: Path
) -> None:
    run_id = logreg_run[0]
    straight, shuffled = tmp_path / "a.csv", tmp_path / "b.csv"
    assert _predict(hub, run_id, _csv(hub.rows, tmp_path / "1.csv"), straight).exit_code == 0
    columns = list(hub.rows.columns[::-1])
    done = _predict(hub, run_id, _csv(hub.rows[columns], tmp_path / "2.csv"), shuffled)
    assert done.exit_code == 0, done.output
    assert straight.read_bytes() == shuffled.read_bytes()


@pytest.mark.parametrize(
    ("change", "said"),
    [
        (lambda f: f.drop(columns=["chol"]), "the table has no column 'chol'"),
        (lambda f: f.assign(cp=["atypical"] + list(f.cp[1:])), "column 'cp' holds 1 values"),
        (lambda f: f.assign(age=[np.nan] + list(f.age[1:])), "column 'age' has 1 missing"),
        (lambda f: f.assign(age=["sixty"] + list(f.age[1:])), "column 'age' is numeric"),
    ],
)
def test_rows_the_contract_cannot_encode_are_refused_naming_file_and_column(
    hub: Hub, logreg_run: tuple[str, np.ndarray, float], tmp_path: Path, change, said: str
) -> None:  # type: ignore[no-untyped-def]
    data, out = _csv(change(hub.rows), tmp_path / "bad.csv"), tmp_path / "p.csv"
    done = _predict(hub, logreg_run[0], data, out)
    assert done.exit_code == USAGE, done.output
    shown = " ".join(done.output.replace("│", " ").split())  # click boxes a usage error
    assert str(data) in shown and said in shown, shown
    assert not out.exists()


def test_a_kept_column_the_file_lacks_is_refused(
    hub: Hub, logreg_run: tuple[str, np.ndarray, float], tmp_path: Path
) -> None:
    data = _csv(hub.rows, tmp_path / "new.csv")
    done = _predict(hub, logreg_run[0], data, tmp_path / "p.csv", "--keep", "patient")
    assert done.exit_code == USAGE, done.output
    assert "'patient'" in done.output


def test_a_tampered_stored_model_is_refused_naming_run_and_version(
    hub: Hub, tmp_path: Path
) -> None:
    run_id = _finished_run(hub, _logreg_weights(5)[0], model=LOGREG)
    altered = _logreg_weights(6)[0]  # a loadable model: only the hash tells them apart
    with sqlite3.connect(hub.db) as db:
        db.execute("UPDATE models SET payload = ? WHERE run_id = ?", (altered, run_id))
    out = tmp_path / "p.csv"
    done = _predict(hub, run_id, _csv(hub.rows, tmp_path / "new.csv"), out)
    assert done.exit_code == FAILED, done.output
    shown = " ".join(done.output.split())
    assert f"run {run_id} model v0: downloaded bytes hash to" in shown, shown
    assert "the stored model was altered" in shown and not out.exists()


def test_an_xgboost_run_predicts_as_its_booster(hub: Hub, tmp_path: Path) -> None:
    import xgboost as xgb

    train = heart_disease_silos()["cleveland"]
    X, y = PIPELINE.transform(train)
    booster = xgb.train({"objective": "binary:logistic", "max_depth": 2}, xgb.DMatrix(X, y), 4)
    trees = TreeSpec.model_validate(
        {"kind": "xgboost", "n_features": PIPELINE.n_features, "params": {"max_depth": 2}}
    )
    run_id = _finished_run(hub, bytes(booster.save_raw("json")), trees=trees)
    out = tmp_path / "p.csv"
    done = _predict(hub, run_id, _csv(hub.rows, tmp_path / "new.csv"), out)
    assert done.exit_code == 0, done.output
    expected = booster.predict(xgb.DMatrix(PIPELINE.encode(hub.rows)))
    np.testing.assert_allclose(pd.read_csv(out)["probability"], expected, rtol=1e-5, atol=1e-6)


def test_a_run_without_its_statistics_round_is_refused(hub: Hub, tmp_path: Path) -> None:
    run_id = _finished_run(hub, _logreg_weights(7)[0], model=LOGREG, federation_statistics=True)
    done = _predict(hub, run_id, _csv(hub.rows, tmp_path / "new.csv"), tmp_path / "p.csv")
    assert done.exit_code == FAILED, done.output
    assert "records no statistics round" in " ".join(done.output.split())


def _with_statistics(hub: Hub, run_id: str, summed: np.ndarray) -> None:
    """The run's statistics as its statistics round would have stored them."""
    with sqlite3.connect(hub.db) as conn:
        conn.execute(
            "UPDATE runs SET federation_stats = ? WHERE id = ?",
            (json.dumps([float(x) for x in summed]), run_id),
        )


def test_new_rows_are_encoded_with_the_runs_federation_statistics(hub: Hub, tmp_path: Path) -> None:
    run_id = _finished_run(hub, _logreg_weights(9)[0], model=LOGREG, federation_statistics=True)
    with pytest.raises(NotFound):  # no statistics round yet
        hub.coord.run_statistics(run_id)
    summed = local_moments(hub.rows, CONTRACT) * 3.0  # as if three such silos summed theirs
    _with_statistics(hub, run_id, summed)
    assert hub.coord.run_statistics(run_id).statistics == [float(x) for x in summed]

    digest = hashlib.sha256(summed.astype(np.float32).tobytes()).hexdigest()
    model = RunModel(run_id, "finished", "logreg", {"federation_statistics": True}, 0, "", "",
                     {}, [], {}, "heart_disease", "1", 0, "", statistics_digest=digest)  # fmt: skip
    stats = run_statistics(hub.coord, model, CONTRACT)
    assert stats == FederationStats.from_summed_moments(summed, CONTRACT)
    assert run_pipeline(model, CONTRACT, stats).stats == stats

    _with_statistics(hub, run_id, summed + 1.0)  # altered on the service since the round
    with pytest.raises(PredictError, match="hash to .* the ledger records"):
        run_statistics(hub.coord, model, CONTRACT)


def test_a_cancelled_run_has_no_final_model(hub: Hub, tmp_path: Path) -> None:
    body = RunSpec(
        federation="heart",
        dataset="heart_disease",
        model=LOGREG,
        secure_aggregation=SecureAggregationSpec(enabled=False),
    )
    run = hub.coord.create_run(RunCreate(spec=body))
    hub.coord.put_initial_model(run.run_id, _logreg_weights(8)[0])
    hub.coord.start_run(run.run_id)
    hub.coord.cancel_run(run.run_id, "wrong dataset")
    data = _csv(hub.rows, tmp_path / "new.csv")
    done = _predict(hub, run.run_id, data, tmp_path / "p.csv")
    assert done.exit_code == CANCELLED, done.output
    shown = " ".join(done.output.split())
    assert "was cancelled (wrong dataset)" in shown and "--model-version 0" in shown, shown
    assert (
        _predict(hub, run.run_id, data, tmp_path / "p.csv", "--model-version", "0").exit_code == 0
    )
