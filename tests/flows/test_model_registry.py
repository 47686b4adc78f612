"""`fedsilo model register` against a real MLflow server, from real federated runs.

A local `mlflow server` (SQLite backend, artifacts in a temp folder) on 127.0.0.1; a real
aggregation service, four UCI hospital agents and the coordinator flow train an XGBoost and a
PyTorch logistic regression model; the CLI registers each. Read back with MlflowClient: the
version exists, its tags name the run, the ledger head and the model's sha256, and the model
MLflow loads predicts what the federation's own model predicts. The same run's report, with
default options, re-hashes the models downloaded from the service.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest
from support.live_service import free_port, publish_shipped_contract, write_heart_silos
from support.stopping import stop_all
from typer.testing import CliRunner

from aggregation.trees.models import predict_proba
from flows.admin_token import private_token_file
from flows.cli import app
from flows.coordinator import federated_training
from flows.lineage_view import payload_of
from flows.processes import Proc, start_agent, start_service
from flows.service_client import CoordinatorClient
from schemas import tensors
from schemas.contracts.loader import load_contract
from schemas.ledger_export import load_ledger_export
from schemas.specs import ModelSpec, SecureAggregationSpec
from schemas.tree_params import TreeSpec
from silos.features import FeaturePipeline

mlflow = pytest.importorskip("mlflow", reason="the registry extra: pip install 'fedsilo[registry]'")
pytestmark = pytest.mark.integration

N_FEATURES = FeaturePipeline.from_contract(load_contract("heart_disease")).n_features
HOSPITALS = ["cleveland", "hungary", "switzerland", "va_long_beach"]
POLICY = (
    'allowed_models = ["logreg", "mlp"]\nmax_rounds_per_run = 100\n\n'
    '[policy.trees]\nallowed_modes = ["bagging"]\nmax_depth = 4\nmin_rows_per_node = 5\n'
)


@dataclass
class MlflowServer:
    proc: subprocess.Popen[bytes]
    url: str
    log: Path


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MlflowServer]:
    """Starts `mlflow server` without waiting, so it boots while the silos enrol."""
    root = tmp_path_factory.mktemp("mlflow")
    port = free_port()
    env = {**os.environ, "MLFLOW_TRACKING_URI": "", "DO_NOT_TRACK": "1"}
    env["MLFLOW_DISABLE_TELEMETRY"] = "true"
    # MLflow's job runner (huey consumers, for its GenAI jobs) serves nothing a registry needs:
    # its processes used ~30 s of CPU in a CI run
    env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "false"
    command = [
        str(Path(sys.executable).with_name("mlflow")),
        "server",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--backend-store-uri",
        f"sqlite:///{root / 'mlflow.db'}",
        "--artifacts-destination",
        str(root / "artifacts"),
        "--workers",
        "1",
    ]
    with (root / "server.log").open("wb") as log:
        proc = subprocess.Popen(
            command, cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        yield MlflowServer(proc, f"http://127.0.0.1:{port}", root / "server.log")
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.fixture(scope="module")
def tracking_uri(mlflow_server: MlflowServer) -> str:
    """The server's address once its health endpoint answers (its first start migrates the
    SQLite store: about a minute on a busy machine)."""
    deadline = time.monotonic() + 600
    while True:
        tail = mlflow_server.log.read_text(errors="replace")[-3000:]
        assert mlflow_server.proc.poll() is None, tail
        assert time.monotonic() < deadline, tail
        try:
            if httpx.get(f"{mlflow_server.url}/health", timeout=2).status_code == 200:
                return mlflow_server.url
        except httpx.TransportError:
            pass
        time.sleep(0.5)


@pytest.fixture(scope="module")
def federation(
    tmp_path_factory: pytest.TempPathFactory, prefect_api_url: str
) -> Iterator[tuple[str, str, CoordinatorClient, Path]]:
    root = tmp_path_factory.mktemp("registry-fed")
    port = free_port()
    service = start_service(root / "service", port)
    url = f"http://127.0.0.1:{port}"
    token = (root / "service" / "admin.token").read_text().strip()
    coord = CoordinatorClient(url, token=token, retry_for_s=60)
    coord.create_federation("heart")
    publish_shipped_contract(coord, "heart", "heart_disease")
    configs = write_heart_silos(
        root / "silos", [url], prefect_api_url, policy=dict.fromkeys(HOSPITALS, POLICY)
    )
    agents: list[Proc] = [
        start_agent(cfg, cfg.parent / "agent.log", prefect_api_url) for cfg in configs.values()
    ]
    try:
        deadline = time.monotonic() + 600  # agents start slowly on a loaded machine
        for name in HOSPITALS:
            while name not in {s.name for s in coord.silos("heart")}:
                assert time.monotonic() < deadline, [a.log_tail() for a in agents]
                time.sleep(0.3)
            coord.approve("heart", name)
        yield url, token, coord, root
    finally:
        stop_all([*agents, service])


def _train(
    federation: tuple[str, str, CoordinatorClient, Path],
    model: ModelSpec | None = None,
    trees: TreeSpec | None = None,
) -> dict:  # type: ignore[type-arg]
    url, token, _, root = federation
    with private_token_file(token) as token_file:
        result = federated_training(
            service_urls=[url],
            admin_token_file=str(token_file),
            federation="heart",
            dataset="heart_disease",
            rounds=2,
            min_silos=4,
            round_deadline_s=300,  # ends when all four answered; the bound is for a busy machine
            output_dir=str(root / "models"),
            secure_aggregation=SecureAggregationSpec(enabled=False),
            model=model,
            trees=trees,
        )
    assert isinstance(result, dict), result
    return result


def _register(
    federation: tuple[str, str, CoordinatorClient, Path], run_id: str, uri: str, name: str
) -> dict:  # type: ignore[type-arg]
    url, token, _, _ = federation
    args = ["model", "register", run_id[:10], "--tracking-uri", uri, "--name", name]
    args += ["--service-url", url, "--token", token, "--json"]
    done = CliRunner().invoke(app, args)
    assert done.exit_code == 0, done.output
    return json.loads(done.stdout)  # MLflow's own chatter goes to stderr


def _check_tags(
    coord: CoordinatorClient, uri: str, registered: dict, run_id: str, model: bytes
) -> None:  # type: ignore[type-arg]
    client = mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)
    version = client.get_model_version(registered["name"], registered["version"])
    assert version.run_id == registered["mlflow_run_id"]
    sha = hashlib.sha256(model).hexdigest()
    tags = version.tags
    assert tags["fedsilo.run_id"] == run_id
    assert tags["fedsilo.model_sha256"] == sha
    assert tags["fedsilo.federation"] == "heart"
    contract = load_contract("heart_disease")
    assert (tags["fedsilo.contract"], tags["fedsilo.contract_version"]) == (
        contract.name,
        contract.version,
    )
    # the ledger head tagged is an entry of the ledger, at or after the run's model_saved
    entries = load_ledger_export(coord.ledger_export()).entries
    by_seq = {e.seq: e for e in entries}
    head = by_seq[int(tags["fedsilo.ledger_head_seq"])]
    assert head.entry_hash == tags["fedsilo.ledger_head_hash"]
    saved = [e for e in entries if e.run_id == run_id and e.kind == "model_saved"]
    assert payload_of(saved[-1])["sha256"] == sha and head.seq >= saved[-1].seq
    run = client.get_run(registered["mlflow_run_id"])
    assert run.data.tags["fedsilo.model_sha256"] == sha
    assert 0.5 < run.data.metrics["final_auc"] <= 1.0
    assert set(HOSPITALS) <= {k.split("/")[0] for k in run.data.metrics if "/" in k}
    # the weighted AUC per round, as the ledger's metrics entries record it
    recorded = [
        json.loads(e.payload) for e in entries if e.run_id == run_id and e.kind == "metrics"
    ]
    want = [(m["round"], m["weighted"]["auc"]) for m in recorded if m["weighted"].get("auc")]
    history = client.get_metric_history(registered["mlflow_run_id"], "auc")
    assert [(m.step, pytest.approx(m.value)) for m in history] == want and want


def _rows() -> np.ndarray:
    rng = np.random.default_rng(7)
    return rng.uniform(-1, 2, size=(25, N_FEATURES)).astype(np.float32)


def test_xgboost_model_registered_with_native_flavour(
    mlflow_server: MlflowServer,
    federation: tuple[str, str, CoordinatorClient, Path],
    tracking_uri: str,
) -> None:
    spec = TreeSpec.model_validate(
        {
            "kind": "xgboost",
            "mode": "bagging",
            "n_features": N_FEATURES,
            "trees_per_round": 2,
            "params": {"max_depth": 3},
        }
    )
    result = _train(federation, trees=spec)
    run_id, model = str(result["run_id"]), Path(str(result["model_path"])).read_bytes()
    registered = _register(federation, run_id, tracking_uri, "heart-xgb")
    assert registered["version"] == "1" and registered["model_uri"] == "models:/heart-xgb/1"
    _check_tags(federation[2], tracking_uri, registered, run_id, model)
    import xgboost as xgb

    mlflow.set_tracking_uri(tracking_uri)
    booster = mlflow.xgboost.load_model(registered["model_uri"])
    X = _rows()
    # the signature names the booster's features: an unnamed matrix is refused, not guessed
    names = list(FeaturePipeline.from_contract(load_contract("heart_disease")).feature_names)
    assert booster.feature_names == names
    with pytest.raises(ValueError, match="did not contain feature names"):
        booster.predict(xgb.DMatrix(X))
    theirs = booster.predict(xgb.DMatrix(X, feature_names=names))
    np.testing.assert_allclose(theirs, predict_proba("xgboost", model, X), rtol=1e-5, atol=1e-6)
    # a second registration of the same run is the next version of the same model
    again = _register(federation, run_id, tracking_uri, "heart-xgb")
    assert again["version"] == "2"


def test_pytorch_model_registered_as_safetensors_with_pyfunc(
    federation: tuple[str, str, CoordinatorClient, Path], tracking_uri: str, tmp_path: Path
) -> None:
    result = _train(federation, model=ModelSpec(kind="logreg", n_features=N_FEATURES))
    run_id, model = str(result["run_id"]), Path(str(result["model_path"])).read_bytes()
    registered = _register(federation, run_id, tracking_uri, "heart-logreg")
    _check_tags(federation[2], tracking_uri, registered, run_id, model)
    mlflow.set_tracking_uri(tracking_uri)
    # the safetensors file itself is in the registry, byte for byte
    local = mlflow.artifacts.download_artifacts(
        f"{registered['model_uri']}", dst_path=str(tmp_path / "dl")
    )
    files = list(Path(local).rglob("*.safetensors"))
    assert [f.read_bytes() for f in files] == [model]
    loaded = mlflow.pyfunc.load_model(registered["model_uri"])
    X = _rows()
    (weight, bias), _ = tensors.decode_expected(
        model, [("layers.0.weight", (1, N_FEATURES)), ("layers.0.bias", (1,))]
    )
    expected = 1.0 / (1.0 + np.exp(-(X @ weight[0] + bias[0])))  # numpy reference, not torch
    # the signature names the contract's encoded features: rows go in by name, in any order
    names = FeaturePipeline.from_contract(load_contract("heart_disease")).feature_names
    rows = pd.DataFrame(X.astype(np.float64), columns=list(names))
    np.testing.assert_allclose(np.asarray(loaded.predict(rows)), expected, rtol=1e-5, atol=1e-6)
    reversed_rows = rows[rows.columns[::-1]]
    np.testing.assert_allclose(np.asarray(loaded.predict(reversed_rows)), expected, rtol=1e-5)
    with pytest.raises(mlflow.exceptions.MlflowException, match="missing inputs"):
        loaded.predict(X)  # an unnamed matrix: its columns' order cannot be checked


def test_report_rehashes_the_models_downloaded_from_the_service(
    federation: tuple[str, str, CoordinatorClient, Path], tmp_path: Path
) -> None:
    url, token, coord, _ = federation
    run_id = coord.list_runs("heart")[0].run_id
    args = ["report", run_id, "--out", str(tmp_path), "--service-url", url, "--token", token]
    done = CliRunner().invoke(app, args)
    assert done.exit_code == 0, done.output
    document = next(tmp_path.glob("*.html")).read_text(encoding="utf-8")
    assert "read from the service (downloaded by the admin API)" in document
    assert 'class="banner pass">Ledger verified' in document
    assert "model files re-hashed and matching the ledger" in document
    assert document.count('<span class="pass">match</span>') >= 3  # v0 and two rounds
