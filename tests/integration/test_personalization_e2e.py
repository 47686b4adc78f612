"""Personalization end to end: service, three silo agents and the coordinator's flow, FedPer.

A short securely aggregated MLP run with `personalize.method = "fedper"`: every silo keeps its
output layer (the head) in its workspace in every round and sends zeros in its place, so the
global model's head never moves; in the evaluation round each silo makes its personalized model
and signs its sha256 and held-out metrics into the ledger. The test reads the service's own
database and files and finds neither a silo's head nor its personalized model there, while the
same search does find the global model's body (so the search could have found them).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import xgboost as xgb
from support.fault_helpers import Federation, train
from support.module_federation import federation_fixture
from support.service_scan import holds, service_bytes
from typer.testing import CliRunner

from flows.cli import app
from flows.report import render_report
from schemas import tensors
from schemas.specs import ModelSpec, PersonalizationSpec, param_shapes
from schemas.tree_params import TreeSpec
from silos.config import load_silo_config
from silos.personalize_state import HEAD_FILE, MODEL_FILE, personal_dir

pytestmark = [pytest.mark.integration, pytest.mark.timeout(1200)]
SILOS = ("cleveland", "hungary", "va_long_beach")
POLICY = (
    'allowed_models = ["logreg", "mlp"]\nmax_rounds_per_run = 100\n\n'
    '[policy.trees]\nallowed_modes = ["bagging"]\nmax_depth = 4\nmin_rows_per_node = 5\n'
)


fed = federation_fixture("personal", SILOS, POLICY)


def test_fedper_heads_and_personalized_models_stay_at_the_silos(
    fed: Federation, tmp_path: Path
) -> None:
    model = ModelSpec(kind="mlp", n_features=fed_n_features(), hidden=(8,))
    result = train(
        fed.urls,
        fed.token,
        tmp_path / "models",
        rounds=2,
        model=model,
        min_silos=2,
        personalize=PersonalizationSpec(method="fedper", max_epochs=5),
    )
    run_id = result["run_id"]
    rows = {r["silo"]: r for r in result["personalized"]}
    assert sorted(rows) == sorted(SILOS)
    names = [n for n, _ in param_shapes(model)]
    initial, _ = tensors.decode(fed.coord.download_model(run_id, 0))
    final, _ = tensors.decode(Path(str(result["model_path"])).read_bytes())
    head_w, head_b = names[-2], names[-1]
    # only zeros were aggregated for the head: the global head is still the initial one
    np.testing.assert_array_equal(final[head_w], initial[head_w])
    np.testing.assert_array_equal(final[head_b], initial[head_b])
    assert not np.array_equal(final[names[0]], initial[names[0]])  # the body did train

    held = service_bytes(fed)
    assert holds(final[names[0]], held)  # the search finds what the service does hold
    statements = [e for e in fed.coord.ledger(run_id) if e.kind == "personalized"]
    assert sorted(e.author for e in statements) == sorted(f"silo:{s}" for s in SILOS)
    for silo in SILOS:
        folder = personal_dir(load_silo_config(fed.configs[silo]).workspace, run_id)
        personal = (folder / MODEL_FILE).read_bytes()
        payload = json.loads(next(e.payload for e in statements if e.author == f"silo:{silo}"))
        assert hashlib.sha256(personal).hexdigest() == payload["model_sha256"]
        assert rows[silo]["model_sha256"] == payload["model_sha256"]
        for key in ("global", "personalized", "local_only"):
            assert 0.0 <= rows[silo][key] <= 1.0  # AUC of each model on the silo's holdout
        head, _ = tensors.decode((folder / HEAD_FILE).read_bytes())
        assert not np.array_equal(head["weight"], initial[head_w])  # the silo trained its head
        mine, _ = tensors.decode(personal)
        assert not holds(head["weight"], held), f"{silo}'s head reached the service"
        assert not holds(mine[head_w], held), f"{silo}'s personalized model reached the service"
        assert personal not in held

    # `runs show` and the HTML report show the same per-silo rows, from the ledger
    auth = ["--service-url", fed.urls[0], "--token", fed.token]
    shown = CliRunner().invoke(app, ["runs", "show", run_id, "--json", *auth])
    assert shown.exit_code == 0, shown.output
    assert json.loads(shown.stdout)["personalized"] == result["personalized"]
    html = render_report(fed.coord.ledger(run_id), fed.coord.ledger_keys(), run_id)
    assert "Personalized models per silo" in html
    assert all(f'title="{rows[s]["model_sha256"]}"' in html for s in SILOS)


def test_tree_silos_continue_boosting_and_sign_their_models(
    fed: Federation, tmp_path: Path
) -> None:
    trees = TreeSpec.model_validate(
        {"kind": "xgboost", "mode": "bagging", "n_features": fed_n_features(),
         "trees_per_round": 2, "params": {"max_depth": 3}}
    )  # fmt: skip
    result = train(
        fed.urls,
        fed.token,
        tmp_path / "models",
        rounds=2,
        model=None,  # type: ignore[arg-type]
        trees=trees,
        secure=False,
        min_silos=2,
        personalize=PersonalizationSpec(method="finetune", max_trees=6),
    )
    run_id = result["run_id"]
    rows = {r["silo"]: r for r in result["personalized"]}
    assert sorted(rows) == sorted(SILOS)
    global_model = Path(str(result["model_path"])).read_bytes()
    n_global = xgb.Booster(model_file=bytearray(global_model)).num_boosted_rounds()
    held = service_bytes(fed)
    for silo in SILOS:
        folder = personal_dir(load_silo_config(fed.configs[silo]).workspace, run_id)
        personal = (folder / MODEL_FILE).read_bytes()
        assert hashlib.sha256(personal).hexdigest() == rows[silo]["model_sha256"]
        booster = xgb.Booster(model_file=bytearray(personal))
        # the global model's trees plus the extra rounds early stopping kept at this silo
        assert booster.num_boosted_rounds() == n_global + rows[silo]["steps"]
        assert rows[silo]["steps"] == 0 or personal not in held


def fed_n_features() -> int:
    from schemas.contracts import load_contract
    from silos.features import FeaturePipeline

    return FeaturePipeline.from_contract(load_contract("heart_disease")).n_features
