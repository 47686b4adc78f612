"""`fedsilo model register` registers only a finished run's final model: a cancelled, failed or
running run has none (its models are intermediate, registered only when `--model-version` names
one), and an unreachable tracking server is named at once (exit 5) instead of after MLflow's
four minutes of retries. A FedBoost ensemble goes in as an ensemble that loads and predicts;
a distillation or vertical run, which has no global model, is refused naming where its models
are. The ledger is the lineage sample's, plus a cancelled and a running run and one run of each
of those kinds; the service client is a stand-in that serves that ledger and its model files."""

from __future__ import annotations

import base64
import json
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from support.lineage_sample import (
    RUN_A,
    RUN_B,
    Sample,
    Writer,
    build_sample,
    run_spec,
    start_run,
)
from support.live_service import free_port
from typer.testing import CliRunner

from flows.cli import app
from flows.cli import model as model_cli
from flows.cli.errors import CANCELLED, FAILED, NOT_FOUND, UNREACHABLE
from flows.exceptions import RunCancelled, UnknownName
from flows.lineage_view import run_view
from schemas.distill import DistillSpec
from schemas.ensemble import EnsembleArtifact, EnsembleSpec, Member
from schemas.ledger_export import export_entries
from schemas.member_kinds import MemberKind
from schemas.specs import ModelSpec
from silos.ensemble import load_ensemble
from silos.local_models import train_local

mlflow = pytest.importorskip("mlflow", reason="the registry extra: pip install 'fedsilo[registry]'")
from flows import model_registry  # noqa: E402  (imports mlflow)

RUN_C, RUN_D = "run-c", "run-d"  # cancelled after model v2; still running at model v1
RUN_E, RUN_F, RUN_V = "run-e", "run-f", "run-v"  # ensemble, distillation, vertical (finished)
LOGREG = ModelSpec(kind="logreg", n_features=13)
ROWS = np.random.default_rng(7).normal(size=(60, 13)).astype(np.float32)
FEATURES = tuple(f"x{i}" for i in range(13))


def _ensemble(w: Writer, silos: tuple[str, ...]) -> None:
    """A finished ensemble run: an empty v0 (as the coordinator starts one), the members
    (v1), the members with learned weights (v2)."""
    spec = run_spec(
        3, silos, LOGREG, ensemble=EnsembleSpec(kinds={"default": "logreg", "hungary": "xgboost"})
    )
    start_run(w, RUN_E, list(silos), spec, None)
    labels = (ROWS[:, 0] > 0).astype(np.float32)
    members = []
    kinds: tuple[MemberKind, ...] = ("logreg", "xgboost")
    for silo, kind in zip(silos, kinds, strict=True):
        local = train_local(kind, ROWS, labels, seed=1)
        data = local.to_bytes()
        members.append(
            Member(
                silo=silo,
                kind=kind,
                sha256=local.sha256,
                n_train=60,
                model_b64=base64.b64encode(data).decode(),
            )
        )
    w.saved(RUN_E, 0, 0, b"", "bin")
    for version, weights in ((1, [0.5, 0.5]), (2, [0.7, 0.3])):
        artifact = EnsembleArtifact(
            run_id=RUN_E, members=members, weights=weights, weight_round=version - 1
        )
        w.saved(RUN_E, version, version, artifact.model_dump_json().encode(), "ensemble.json")
    _finish(w, RUN_E, 2)


def _finish(w: Writer, run_id: str, version: int) -> None:
    final = {"status": "finished", "reason": "done", "final_model_version": version}
    w.service(
        "run_finished", final | {"final_model_sha256": w.sample.models[(run_id, version)]}, run_id
    )


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory) -> Sample:
    root = tmp_path_factory.mktemp("ledger")
    built = build_sample(root)
    w = Writer(built)
    silos = ("cleveland", "hungary")
    start_run(w, RUN_C, list(silos), run_spec(50, silos, LOGREG), None)
    for version in (0, 1, 2):
        w.model(RUN_C, version, version, LOGREG)
    w.service("run_cancelled", {"reason": "wrong dataset", "round": 3}, RUN_C)
    start_run(w, RUN_D, list(silos), run_spec(5, silos, LOGREG), None)
    w.model(RUN_D, 0, 0, LOGREG)
    w.model(RUN_D, 1, 1, LOGREG)
    _ensemble(w, silos)
    distill = DistillSpec(kinds={"default": "logreg"})
    spec = run_spec(3, silos, LOGREG, distill=distill, federation_statistics=True)
    start_run(w, RUN_F, list(silos), spec, None)
    w.saved(RUN_F, 1, 1, np.full(512, 0.5, np.float32).tobytes(), "bin")  # the soft labels
    _finish(w, RUN_F, 1)
    started = {"federation": "heart", "active": "cleveland", "parties": list(silos)}
    w.service(
        "vertical_started", started | {"mode": "train", "params": {}, "model_run": None}, RUN_V
    )
    w.service(
        "vertical_finished",
        {"trees": 3, "epochs": 0, "model_digest": "ab" * 32, "reason": ""},
        RUN_V,
    )
    return built


class _Service:
    """The admin API calls `model register` makes, answered from the sample."""

    def __init__(self, sample: Sample) -> None:
        self.sample = sample

    def ledger_export(self) -> str:
        return export_entries(self.sample.entries())

    def ledger_keys(self) -> dict[str, str]:
        return dict(self.sample.keys)

    def download_model(self, run_id: str, version: int) -> bytes:
        (path,) = (self.sample.store / "models" / run_id).glob(f"v{version}.*")
        return path.read_bytes()


@pytest.fixture
def register(sample: Sample, monkeypatch: pytest.MonkeyPatch, tmp_path: Path):  # type: ignore[no-untyped-def]
    monkeypatch.setattr(model_cli, "coordinator", lambda *args: _Service(sample))
    # the stand-in serves no published contract: its runs' encoded feature names, as given
    monkeypatch.setattr(model_cli, "feature_names", lambda client, model: FEATURES)
    monkeypatch.chdir(tmp_path)  # a sqlite:/// store keeps its artifacts in ./mlruns

    def invoke(run_id: str, tracking_uri: str, *extra: str):  # type: ignore[no-untyped-def]
        args = ["model", "register", run_id, "--tracking-uri", tracking_uri, *extra]
        return CliRunner().invoke(app, args)

    return invoke


def test_only_a_finished_run_has_a_final_model(sample: Sample) -> None:
    entries = sample.entries()
    finished, failed = run_view(entries, RUN_A), run_view(entries, RUN_B)
    cancelled, running = run_view(entries, RUN_C), run_view(entries, RUN_D)
    assert finished.finished_model is not None and finished.finished_model.version == 3
    assert (cancelled.status, cancelled.finished_model) == ("cancelled", None)
    assert (failed.status, failed.finished_model) == ("failed", None)
    assert (running.status, running.finished_model) == ("in progress", None)
    # the models each saved are still its output so far (lineage events list the last one)
    assert cancelled.final_model == cancelled.model(2) and cancelled.model(7) is None


@pytest.mark.parametrize(
    ("run_id", "said", "last"),
    [
        (RUN_C, "was cancelled (wrong dataset)", 2),
        (RUN_B, "failed (round 2: 1 of 2 silos answered by the deadline", 1),
        (RUN_D, "is still running", 1),
    ],
)
def test_a_run_that_did_not_finish_is_refused_naming_its_state(
    sample: Sample, run_id: str, said: str, last: int
) -> None:
    with pytest.raises(model_registry.RegistryError) as refused:
        model_registry.run_model(sample.entries(), sample.keys, run_id)
    message = str(refused.value)
    assert message.startswith(f"run {run_id} {said}")
    assert f"--model-version {last}" in message
    # a cancelled run's refusal is a RunCancelled: the CLI says "no final model" and exits 7
    cancelled = isinstance(refused.value, RunCancelled)
    assert cancelled == (run_id == RUN_C)
    assert cancelled or "no final model" in message


def test_model_version_picks_an_intermediate_model(sample: Sample) -> None:
    chosen = model_registry.run_model(sample.entries(), sample.keys, RUN_C, version=1)
    assert (chosen.model_version, chosen.run_status) == (1, "cancelled")
    assert chosen.sha256 == sample.models[(RUN_C, 1)]
    assert chosen.tags()["fedsilo.run_status"] == "cancelled"
    with pytest.raises(UnknownName, match=r"run run-c saved no model v9 \(saved: v0, v1, v2\)"):
        model_registry.run_model(sample.entries(), sample.keys, RUN_C, version=9)


def test_the_cli_refuses_a_cancelled_run(register, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    store = tmp_path / "mlflow.db"
    done = register(RUN_C, f"sqlite:///{store}")
    assert done.exit_code == CANCELLED, done.output  # the README's exit-code table: 7
    shown = " ".join(done.output.split())
    assert shown.startswith("error: run run-c was cancelled (wrong dataset); its last model v2"), (
        shown
    )
    assert "pass --model-version 2; it has no final model" in shown, shown
    assert not store.exists()  # nothing was registered
    unknown = register(RUN_C, f"sqlite:///{store}", "--model-version", "9")
    assert unknown.exit_code == NOT_FOUND, unknown.output


def test_the_cli_registers_an_intermediate_model_when_asked(register, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    done = register(RUN_C, uri, "--model-version", "2", "--name", "heart-c", "--json")
    assert done.exit_code == 0, done.output
    registered = json.loads(done.stdout)
    assert (registered["model_version"], registered["run_status"]) == (2, "cancelled")
    client = mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)
    tags = client.get_model_version("heart-c", registered["version"]).tags
    assert tags["fedsilo.model_version"] == "2" and tags["fedsilo.run_status"] == "cancelled"


def test_an_unreachable_tracking_server_is_named_at_once(register) -> None:  # type: ignore[no-untyped-def]
    uri = f"http://127.0.0.1:{free_port()}"
    started = time.monotonic()
    done = register(RUN_A, uri)
    assert done.exit_code == UNREACHABLE, done.output
    line = done.output.strip().splitlines()[-1]
    assert line.startswith(f"error: the MLflow tracking server {uri} did not answer"), line
    assert "unexpected" not in line
    # MLflow's own budget is 7 retries with backoff (~4 min): one refused attempt is enough
    assert time.monotonic() - started < 60


def test_an_ensemble_is_registered_as_an_ensemble_that_predicts(
    register, sample: Sample, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    done = register(RUN_E, uri, "--json")
    assert done.exit_code == 0, done.output
    registered = json.loads(done.stdout)
    # its own name and kind: not a new version of the federation's logreg model
    assert registered["name"] == "fedsilo-heart-heart_disease_uci-ensemble"
    assert registered["tags"]["fedsilo.model_kind"] == "ensemble"
    assert registered["model_version"] == 2
    loaded = mlflow.pyfunc.load_model(registered["model_uri"])
    payload = _Service(sample).download_model(RUN_E, 2)
    expected = load_ensemble(payload).predict_proba(ROWS[:5])
    rows = pd.DataFrame(ROWS[:5].astype(np.float64), columns=list(FEATURES))
    np.testing.assert_allclose(loaded.predict(rows), expected, rtol=1e-6)
    # by name: reversed columns predict the same; an unnamed array or a missing column is refused
    np.testing.assert_allclose(loaded.predict(rows[rows.columns[::-1]]), expected, rtol=1e-6)
    with pytest.raises(mlflow.exceptions.MlflowException, match="missing inputs"):
        loaded.predict(ROWS[:5])
    with pytest.raises(mlflow.exceptions.MlflowException, match=r"missing inputs \['x3'\]"):
        loaded.predict(rows.drop(columns=["x3"]))


def test_an_ensemble_runs_empty_first_version_is_refused(register, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    store = tmp_path / "mlflow.db"
    done = register(RUN_E, f"sqlite:///{store}", "--model-version", "0")
    assert done.exit_code == FAILED, done.output
    assert "error: run run-e model v0 is not a loadable ensemble model" in " ".join(
        done.output.split()
    )
    assert not store.exists()


@pytest.mark.parametrize(
    ("run_id", "said"),
    [
        (RUN_F, ["run run-f is a distillation run: it has no global model", "distill/run-f.model"]),
        (
            RUN_V,
            [
                "run run-v is a vertical run",
                "fedsilo vertical predict --federation heart --model-run run-v",
            ],
        ),
    ],
)
def test_a_run_without_a_global_model_is_refused_saying_where_its_models_are(
    register, tmp_path: Path, run_id: str, said: list[str]
) -> None:  # type: ignore[no-untyped-def]
    store = tmp_path / "mlflow.db"
    done = register(run_id, f"sqlite:///{store}")
    assert done.exit_code == FAILED, done.output
    shown = " ".join(done.output.split())
    assert all(text in shown for text in said), shown
    assert not store.exists()  # nothing was registered


def test_a_pytorch_model_that_does_not_hold_the_specs_arrays_is_refused(sample: Sample) -> None:
    model = model_registry.run_model(sample.entries(), sample.keys, RUN_A)
    model_registry.check_loadable(model, _Service(sample).download_model(RUN_A, 3))
    with pytest.raises(
        model_registry.RegistryError, match=r"run run-a model v3 is not a loadable mlp model"
    ):
        model_registry.check_loadable(
            replace(model, spec={**model.spec, "model": LOGREG.model_dump()}),
            _Service(sample).download_model(RUN_A, 3),
        )
