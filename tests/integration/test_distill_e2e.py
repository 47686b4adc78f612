"""FedDistill end to end: service, three silo agents of three model kinds, the coordinator flow.

Cleveland trains XGBoost, Hungary an MLP, VA Long Beach a logistic regression; after the
statistics round, two distillation rounds exchange P(y=1) on the synthetic reference set
through secure aggregation. The test recomputes every silo's predictions from the model the
silo kept, checks that the published soft labels are their example-weighted mean, and searches
the service's database and files: the soft labels are there, no silo's model or own
predictions are. The ledger holds each silo's model sha256 and metrics; `runs show` prints them.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from support.fault_helpers import Federation, query, train
from support.module_federation import federation_fixture
from support.service_scan import holds, service_bytes
from typer.testing import CliRunner

from flows.cli import app
from schemas.contracts import load_contract
from schemas.distill import DistillSpec, weighted_soft_labels
from schemas.specs import ModelSpec
from silos.config import load_silo_config
from silos.distill import STATE_DIR, decode_soft_labels, reference_rows
from silos.features import FeaturePipeline
from silos.local_models import load_local

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]
KINDS = {"cleveland": "xgboost", "hungary": "mlp", "va_long_beach": "logreg"}
SILOS = tuple(KINDS)
POLICY = 'allowed_models = ["logreg", "mlp"]\nmax_rounds_per_run = 100\n'


fed = federation_fixture("distill", SILOS, POLICY)


def test_three_model_kinds_share_only_aggregated_soft_labels(
    fed: Federation, tmp_path: Path
) -> None:
    contract = load_contract("heart_disease")
    n_features = FeaturePipeline.from_contract(contract).n_features
    grid = (0.0, 0.5, 1.0)
    distill = DistillSpec(kinds={"default": "logreg", **KINDS}, reference_rows=64, weights=grid)
    result = train(
        fed.urls,
        fed.token,
        tmp_path / "models",
        rounds=2,
        model=ModelSpec(kind="mlp", n_features=n_features, hidden=(8,)),
        distill=distill,
    )
    run_id = result["run_id"]
    # statistics round 1, distillation rounds 2 and 3; no evaluation round (no global model)
    assert [r["round"] for r in result["rounds"]] == [1, 2, 3]
    assert result["final_version"] == 3
    # what the coordinator saves is the last soft labels, named so: no model to mistake it for
    assert str(result["model_path"]).endswith(f"{run_id}-v3.soft_labels.safetensors")
    rows = {r["silo"]: r for r in result["distilled"]}
    assert {s: r["kind"] for s, r in rows.items()} == KINDS
    assert all(r["round"] == 3 and r["soft_labels_version"] == 2 for r in rows.values())

    (stats_json,) = query(fed.db_url, "SELECT federation_stats FROM runs WHERE id = :r", r=run_id)[
        0
    ]
    spec = fed.coord.get_run(run_id).spec
    X_ref = reference_rows(spec, run_id, contract, json.loads(stats_json))
    published = decode_soft_labels(fed.coord.download_model(run_id, 3), len(X_ref))
    held = service_bytes(fed)
    assert holds(published.astype(np.float32), held)  # the search finds what the service holds

    statements = [e for e in fed.coord.ledger(run_id) if e.kind == "distilled"]
    assert sorted({e.author for e in statements}) == sorted(f"silo:{s}" for s in SILOS)
    predictions = []
    for silo, kind in KINDS.items():
        model_bytes = (
            load_silo_config(fed.configs[silo]).workspace / STATE_DIR / f"{run_id}.model"
        ).read_bytes()
        assert hashlib.sha256(model_bytes).hexdigest() == rows[silo]["model_sha256"]
        model = load_local(kind, model_bytes)  # the silo's model is of its own kind
        p = model.predict_proba(X_ref)
        predictions.append(p)
        assert model_bytes not in held and not any(model_bytes[-256:] in b for b in held)
        assert not holds(p, held), f"{silo}'s own predictions reached the service"
        for key in ("distilled", "alone"):
            assert 0.0 <= rows[silo][key] <= 1.0  # ROC AUC on the silo's held-out rows
    last = {json.loads(e.payload)["silo"]: json.loads(e.payload) for e in statements}
    counts = [last[s]["n_train"] for s in KINDS]
    for silo, statement in last.items():  # each silo chose its weight on its validation rows
        losses = dict(statement["validation"])
        assert sorted(losses) == list(grid) and rows[silo]["weight"] == statement["weight"]
        lowest = min(grid, key=lambda w: (losses[w], w))
        confidence = statement["confidence"]  # the gate's, asked when a weight > 0 won
        assert (confidence is None) == (lowest == 0)
        held = confidence is not None and confidence < distill.min_confidence
        assert statement["weight"] == (0.0 if held else lowest)
        if statement["weight"] == 0:  # it kept the model it trained alone
            assert statement["distilled"] == statement["alone"]
    # the published soft labels are the example-weighted mean of the silos' predictions
    np.testing.assert_allclose(published, weighted_soft_labels(predictions, counts), atol=1e-5)

    aggregates = [json.loads(e.payload) for e in fed.coord.ledger(run_id) if e.kind == "aggregate"]
    distilled = [a for a in aggregates if a.get("distill")]
    assert [a["round"] for a in distilled] == [2, 3]
    assert all(a["individual_updates_seen_by_service"] is False for a in distilled)
    assert (
        json.loads(
            CliRunner()
            .invoke(
                app,
                [
                    "runs",
                    "show",
                    run_id,
                    "--json",
                    "--service-url",
                    fed.urls[0],
                    "--token",
                    fed.token,
                ],
            )
            .stdout
        )["distilled"]
        == result["distilled"]
    )
