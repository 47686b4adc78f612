"""Tree models across four hospitals as real processes: the service, four silo agents and the
coordinator flow, for XGBoost and LightGBM in bagging, cyclic and XGBoost's collective mode.

One federation serves all runs (agents take runs one after another), which keeps this quick.
Every global model must load with the library's own Booster and predict exactly what the
service's numpy evaluation predicts.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path

import lightgbm as lgb
import numpy as np
import pandas as pd
import pytest
import xgboost as xgb
from support.live_service import free_port, publish_shipped_contract, write_heart_silos
from support.progress import file_sizes, wait_progressing
from support.stopping import stop_all

from aggregation.trees.models import predict_proba
from flows.admin_token import private_token_file
from flows.coordinator import federated_training
from flows.demo_trees import collective_pki
from flows.processes import Proc, start_agent, start_service
from flows.service_client import CoordinatorClient
from schemas.contracts.loader import load_contract
from schemas.specs import SecureAggregationSpec
from schemas.tree_params import TreeSpec
from silos.features import FeaturePipeline

# generous: a module's shared federation (processes, cold start) counts toward its first test,
# and on a loaded machine that alone can pass pytest's default 600 s; the waits inside fail
# sooner when the federation stops making progress
pytestmark = [pytest.mark.integration, pytest.mark.timeout(1800)]
NAMES = FeaturePipeline.from_contract(load_contract("heart_disease")).feature_names
N_FEATURES = len(NAMES)
HOSPITALS = ["cleveland", "hungary", "switzerland", "va_long_beach"]
POLICY = (
    'allowed_models = ["logreg", "mlp"]\nmax_rounds_per_run = 100\n\n'
    '[policy.trees]\nallowed_modes = ["bagging", "cyclic", "collective", "secure-hist"]\n'
    "max_depth = 4\nmin_rows_per_node = 5\n"
)


@pytest.fixture(scope="module")
def federation(
    tmp_path_factory: pytest.TempPathFactory, prefect_api_url: str
) -> Iterator[tuple[str, str, CoordinatorClient, Path]]:
    root = tmp_path_factory.mktemp("trees")
    pki = collective_pki(root / "pki", HOSPITALS)
    port = free_port()
    service = start_service(root / "service", port, env=pki.service_env)
    url = f"http://127.0.0.1:{port}"
    token = (root / "service" / "admin.token").read_text().strip()
    coord = CoordinatorClient(url, token=token, retry_for_s=60)
    coord.create_federation("heart")
    publish_shipped_contract(coord, "heart", "heart_disease")  # secure-hist reads it at the hub
    configs = write_heart_silos(
        root / "silos", [url], prefect_api_url, policy=dict.fromkeys(HOSPITALS, POLICY)
    )
    for name, cfg in configs.items():
        ca, cert, key = pki.silo_files[name]
        with cfg.open("a") as fh:
            fh.write(f'\n[collective]\nca = "{ca}"\ncert = "{cert}"\nkey = "{key}"\n')
    agents: list[Proc] = [
        start_agent(cfg, cfg.parent / "agent.log", prefect_api_url) for cfg in configs.values()
    ]
    try:
        for name in HOSPITALS:
            _wait_enrolled(coord, name, agents)
            coord.approve("heart", name)
        yield url, token, coord, root
    finally:
        stop_all([*agents, service])


def _wait_enrolled(coord: CoordinatorClient, name: str, agents: list[Proc]) -> None:
    """Wait while the agents start (their logs grow); fail if one exits or all stall."""

    def enrolled() -> bool:
        assert all(a.alive() for a in agents), [a.log_tail() for a in agents]
        return name in {s.name for s in coord.silos("heart")}

    wait_progressing(
        enrolled,
        lambda: file_sizes([a.log_path.parent for a in agents]),
        f"{name} to enrol",
        lambda: "\n".join(a.log_tail() for a in agents),
        poll_s=0.3,
    )


def _train(url: str, token: str, out: Path, spec: TreeSpec, rounds: int) -> dict:  # type: ignore[type-arg]
    with private_token_file(token) as token_file:
        result = federated_training(
            service_urls=[url],
            admin_token_file=str(token_file),
            federation="heart",
            dataset="heart_disease",
            trees=spec,
            rounds=rounds,
            min_silos=4,
            # an upper bound: every round closes once all four answered
            round_deadline_s=600,
            output_dir=str(out),
            secure_aggregation=SecureAggregationSpec(enabled=False),
        )
    assert isinstance(result, dict), result  # a Prefect State only when the run was cancelled
    return result


def _spec(kind: str, mode: str) -> TreeSpec:
    params = (
        {"max_depth": 3}
        if kind == "xgboost"
        else {"num_leaves": 7, "max_depth": 3, "min_data_in_leaf": 5}
    )
    return TreeSpec.model_validate(
        {
            "kind": kind,
            "mode": mode,
            "n_features": N_FEATURES,
            "trees_per_round": 2,
            "params": params,
        }
    )


def _check_native(kind: str, model: bytes) -> int:
    """The library loads the model and predicts what the service's own evaluation predicts."""
    X = np.random.default_rng(0).uniform(-1, 2, size=(200, N_FEATURES)).astype(np.float32)
    X[::7, 3] = np.nan
    ours = predict_proba(kind, model, X)  # type: ignore[arg-type]
    # every mode's model names the contract's encoded features, in order, so the library
    # refuses a table whose columns are reordered (LightGBM when asked; it writes " " as "_")
    if kind == "xgboost":
        booster = xgb.Booster(model_file=bytearray(model))
        assert booster.feature_names == list(NAMES)
        frame = pd.DataFrame(X, columns=list(NAMES))
        theirs = booster.predict(xgb.DMatrix(frame))
        with pytest.raises(ValueError, match="feature_names mismatch"):
            booster.predict(xgb.DMatrix(frame[frame.columns[::-1]]))
        n_trees = booster.num_boosted_rounds()
    else:
        lgb_booster = lgb.Booster(model_str=model.decode())
        assert lgb_booster.feature_name() == [n.replace(" ", "_") for n in NAMES]
        frame = pd.DataFrame(X, columns=lgb_booster.feature_name())
        theirs = np.asarray(lgb_booster.predict(frame, validate_features=True))
        with pytest.raises(lgb.basic.LightGBMError):
            lgb_booster.predict(frame[frame.columns[::-1]], validate_features=True)
        n_trees = lgb_booster.num_trees()
    np.testing.assert_allclose(theirs, ours, rtol=1e-5, atol=1e-6)
    return int(n_trees)


def _aggregates(coord: CoordinatorClient, run_id: str) -> list[dict]:  # type: ignore[type-arg]
    entries = [e.payload for e in coord.ledger(run_id) if e.kind == "aggregate"]
    return [json.loads(p) if isinstance(p, str) else p for p in entries]


@pytest.mark.parametrize(
    ("kind", "mode"), [("xgboost", "bagging"), ("lightgbm", "bagging"), ("lightgbm", "cyclic")]
)
def test_tree_modes_train_native_models(
    federation: tuple[str, str, CoordinatorClient, Path], kind: str, mode: str
) -> None:
    url, token, coord, root = federation
    result = _train(url, token, root / "models", _spec(kind, mode), rounds=2)
    rounds = result["rounds"]
    assert [r["kind"] for r in rounds] == ["train", "train", "evaluate"]
    assert all(sorted(r["contributors"]) == HOSPITALS for r in rounds)
    model = Path(result["model_path"]).read_bytes()
    assert hashlib.sha256(model).hexdigest() == result["model_sha256"]
    assert result["model_path"].endswith(".json" if kind == "xgboost" else ".txt")
    n_trees = _check_native(kind, model)
    # bagging adds every hospital's trees per round; cyclic too, one hospital after another
    assert n_trees == 2 * 4 * 2
    assert rounds[-1]["auc"] > 0.7, rounds[-1]
    aggregates = _aggregates(coord, result["run_id"])
    assert [a["trees"]["mode"] for a in aggregates] == [mode, mode]
    assert all(
        a["sealed_to_service"] and a["individual_updates_seen_by_service"] for a in aggregates
    )
    if mode == "cyclic":  # the order rotates every round and is recorded
        assert aggregates[0]["order"] == HOSPITALS
        assert aggregates[1]["order"] == HOSPITALS[1:] + HOSPITALS[:1]


def test_xgboost_collective_over_mutual_tls(
    federation: tuple[str, str, CoordinatorClient, Path],
) -> None:
    url, token, coord, root = federation
    result = _train(url, token, root / "models", _spec("xgboost", "collective"), rounds=2)
    model = Path(result["model_path"]).read_bytes()
    assert _check_native("xgboost", model) == 2 * 2  # one joint model: 2 trees a round
    assert result["rounds"][-1]["auc"] > 0.7
    aggregates = _aggregates(coord, result["run_id"])
    assert all("histograms" in a["service_sees"] for a in aggregates), json.dumps(aggregates)
    # every worker submitted its (identical, service-checked) copy of the joint trees
    assert all(len(a["contributors"]) == 4 for a in aggregates)


def test_xgboost_secure_hist_service_sees_only_sums(
    federation: tuple[str, str, CoordinatorClient, Path],
) -> None:
    """Secure-hist through the real agents: 2 trees of depth 2, one a round."""
    url, token, coord, root = federation
    spec = TreeSpec.model_validate(
        {
            "kind": "xgboost",
            "mode": "secure-hist",
            "n_features": N_FEATURES,
            "trees_per_round": 1,
            "params": {"max_depth": 2, "max_bin": 32},
            "secure_hist": {"fine_cells": 256, "min_rows_per_node": 5},
        }
    )
    result = _train(url, token, root / "models", spec, rounds=2)
    rounds = result["rounds"]
    assert [r["kind"] for r in rounds] == ["train", "train", "evaluate"]
    assert all(sorted(r["contributors"]) == HOSPITALS for r in rounds)
    model = Path(result["model_path"]).read_bytes()
    assert _check_native("xgboost", model) == 2
    assert rounds[-1]["auc"] > 0.7
    aggregates = _aggregates(coord, result["run_id"])
    assert [a["trees"]["mode"] for a in aggregates] == ["secure-hist", "secure-hist"]
    for a in aggregates:
        assert a["secure_aggregation"] and not a["individual_updates_seen_by_service"]
        assert a["service_sees"].startswith("only federation-wide sums"), a
        assert a["dropouts"] == [] and a["aggregations"] >= 1
