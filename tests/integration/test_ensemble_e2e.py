"""FedBoost ensemble end to end: service, three silo agents, the coordinator flow, secure
aggregation on.

Cleveland trains an XGBoost member, Hungary an MLP, VA Long Beach a LightGBM model; two weight
rounds learn the mixture weights from securely summed gradients; the closing round has every
silo sign the final ensemble's and its own member's held-out metrics into the ledger. The test
reads the saved artifact (every member's hash, weights summing to 1, not uniform), checks each
member's bytes against its hash and its silo's kind, that the weights follow the ledger, that
each silo kept its personal ensemble (owner-only, its sha256 and weights in its statement, its
bytes nowhere in the service's database or files), and that `runs show` prints the rows.
"""

from __future__ import annotations

import hashlib
import json
import stat
from pathlib import Path

import numpy as np
import pytest
from support.fault_helpers import Federation, train
from support.module_federation import federation_fixture
from support.service_scan import service_bytes
from typer.testing import CliRunner

from flows.cli import app
from schemas.contracts import load_contract
from schemas.ensemble import EnsembleArtifact, EnsembleSpec
from schemas.specs import ModelSpec
from silos.config import load_silo_config
from silos.ensemble import STATE_DIR
from silos.features import FeaturePipeline
from silos.local_models import load_local

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]
KINDS = {"cleveland": "xgboost", "hungary": "mlp", "va_long_beach": "lightgbm"}
SILOS = tuple(KINDS)
POLICY = 'allowed_models = ["logreg", "mlp"]\nmax_rounds_per_run = 100\n'


fed = federation_fixture("ensemble", SILOS, POLICY)


def test_mixed_kinds_make_one_weighted_ensemble(fed: Federation, tmp_path: Path) -> None:
    n_features = FeaturePipeline.from_contract(load_contract("heart_disease")).n_features
    result = train(
        fed.urls,
        fed.token,
        tmp_path / "models",
        rounds=3,
        model=ModelSpec(kind="mlp", n_features=n_features, hidden=(8,)),
        ensemble=EnsembleSpec(kinds={"default": "logreg", **KINDS}),
    )
    run_id = result["run_id"]
    kinds = [r["kind"] for r in result["rounds"]]
    assert kinds[-1] == "evaluate" and kinds.count("train") == 3, result["rounds"]

    saved = Path(str(result["model_path"])).read_bytes()
    assert saved == fed.coord.download_model(run_id, int(result["final_version"]))
    artifact = EnsembleArtifact.model_validate_json(saved)
    assert [m.silo for m in artifact.members] == sorted(SILOS)
    for member in artifact.members:
        assert member.kind == KINDS[member.silo]
        model = load_local(member.kind, member.model_bytes())  # checks the sha256
        assert model.sha256 == member.sha256
    weights = np.array(artifact.weights)
    assert weights.sum() == pytest.approx(1.0) and (weights > 0).all()
    assert np.ptp(weights) > 1e-3, f"the weights stayed uniform: {weights}"
    assert artifact.weight_round == 2

    ledger = fed.coord.ledger(run_id)
    aggregates = [json.loads(e.payload) for e in ledger if e.kind == "aggregate"]
    ensembles = [a for a in aggregates if "ensemble" in a]
    assert len(ensembles) == 3  # members, then two weight rounds
    first = ensembles[0]
    assert {c["silo"]: c["digest"] for c in first["contributors"]} == {
        m.silo: m.sha256 for m in artifact.members
    }
    assert [m["weight"] for m in ensembles[-1]["ensemble"]] == pytest.approx(artifact.weights)
    assert all(a["individual_updates_seen_by_service"] is False for a in ensembles[1:])
    # only summed gradients leave a silo in a weight round: no per-silo validation metrics
    weight_rounds = {a["round"] for a in ensembles[1:]}
    scored = [json.loads(e.payload) for e in ledger if e.kind == "metrics"]
    assert not [m for m in scored if m["round"] in weight_rounds], scored

    statements = [e for e in ledger if e.kind == "ensembled"]
    assert sorted(e.author for e in statements) == sorted(f"silo:{s}" for s in SILOS)
    rows = {r["silo"]: r for r in result["ensemble"]}
    held = service_bytes(fed)
    for silo in SILOS:
        row = rows[silo]
        assert row["kind"] == KINDS[silo]
        assert 0.0 <= row["ensemble_auc"] <= 1.0 and 0.0 <= row["member_auc"] <= 1.0
        # the silo's personal ensemble: in its workspace, owner-only, named in its statement
        kept = load_silo_config(fed.configs[silo]).workspace / STATE_DIR / f"{run_id}.personal.json"
        assert stat.S_IMODE(kept.stat().st_mode) == 0o600
        data = kept.read_bytes()
        assert hashlib.sha256(data).hexdigest() == row["personal_sha256"]
        personal = EnsembleArtifact.model_validate_json(data)
        assert [m.sha256 for m in personal.members] == [m.sha256 for m in artifact.members]
        assert sum(personal.weights) == pytest.approx(1.0) and personal.weights != artifact.weights
        assert 0.0 <= row["personal_auc"] <= 1.0
        assert data not in held and not any(data[-200:] in b for b in held)
    shown = CliRunner().invoke(
        app, ["runs", "show", run_id, "--json", "--service-url", fed.urls[0], "--token", fed.token]
    )
    assert json.loads(shown.stdout)["ensemble"] == result["ensemble"]
