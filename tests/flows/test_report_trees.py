"""The model card of a tree run: the tree settings, not the PyTorch ones, and the final model's
real format (XGBoost JSON, LightGBM text) beside the service's ``.safetensors`` file name,
with a one-line loader that works on that file."""

from __future__ import annotations

import html
import os
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from support.lineage_sample import SILOS, open_ledger, run_spec, start_run

from flows.report import write_report
from flows.report_sections import LOAD_LABEL
from schemas.contracts.loader import load_contract
from schemas.specs import SecureAggregationSpec
from schemas.tree_params import TreeSpec
from silos.features import FeaturePipeline
from silos.tree_trainer import name_features, train_trees

NAMES = FeaturePipeline.from_contract(load_contract("heart_disease")).feature_names
SPECS = {
    "xgboost": {"kind": "xgboost", "params": {"max_depth": 3, "eta": 0.3}},
    "lightgbm": {"kind": "lightgbm", "params": {"num_leaves": 7, "learning_rate": 0.2}},
    "secure-hist": {"kind": "xgboost", "mode": "secure-hist", "params": {"max_depth": 2}},
}


def _model(spec: TreeSpec) -> bytes:
    """A small named model of the spec's library, as a run would store it."""
    rng = np.random.default_rng(0)
    X = rng.uniform(size=(200, len(NAMES))).astype(np.float32)
    y = (X[:, 0] > 0.5).astype(np.float32)
    return name_features(spec, train_trees(spec, None, X, y).model, NAMES)


def _card(run_id: str, spec: TreeSpec, tmp_path: Path) -> dict[str, str]:
    (tmp_path / "ledger").mkdir()
    w = open_ledger(tmp_path / "ledger")
    off = SecureAggregationSpec(enabled=False)  # tree updates are sealed, not summed
    run = run_spec(3, model=None, trees=spec, secure_aggregation=off)  # type: ignore[arg-type]
    start_run(w, run_id, list(SILOS), run, None)
    # the service names every model file .safetensors, whatever it holds
    sha = w.saved(run_id, 3, 3, _model(spec), "safetensors")
    finished = {"status": "finished", "final_model_version": 3, "final_model_sha256": sha}
    w.service("run_finished", finished, run_id)
    path = write_report(w.sample.entries(), w.sample.keys, run_id, tmp_path / "out", w.sample.store)
    card = path.read_text(encoding="utf-8").split('<h2 id="model-card">')[1].split("</table>")[0]
    rows = re.findall(r"<tr><th>(.*?)</th><td>(.*?)</td></tr>", card)
    return {html.unescape(k): html.unescape(re.sub("<[^>]+>", "", v)) for k, v in rows}


@pytest.mark.parametrize("which", sorted(SPECS))
def test_a_tree_runs_card_shows_its_settings_and_how_to_load_the_model(
    which: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    raw = {"n_features": len(NAMES), "trees_per_round": 2, **SPECS[which]}
    spec = TreeSpec.model_validate(raw)
    card = _card("trees", spec, tmp_path)
    kind, mode = spec.kind, spec.mode
    assert card["model kind"] == f"{kind} trees, mode {mode}"
    assert card["objective / features"] == f"binary:logistic / {len(NAMES)}"
    assert card["trees per round"] == "2"
    for key, value in SPECS[which]["params"].items():  # type: ignore[attr-defined]
        assert f'"{key}": {value}' in card["tree parameters"]
    assert ("secure-hist" in card) == (mode == "secure-hist")
    assert card["rounds / min silos"] == "3 / 2"
    # what does not apply to trees is left out (it showed PyTorch defaults)
    for label in ("features / hidden layers", "parameters", "strategy", "local training"):
        assert label not in card
    library = "XGBoost JSON" if kind == "xgboost" else "LightGBM model text"
    assert card["final model"].startswith(f"v3 at models/trees/v3.safetensors ({library}")
    # the card's one line loads the file and predicts on rows named as the contract's features
    line = card[LOAD_LABEL]
    assert "models/trees/v3.safetensors" in line
    monkeypatch.chdir(tmp_path / "ledger" / "store")
    assert os.path.exists("models/trees/v3.safetensors")
    columns = list(NAMES) if kind == "xgboost" else [n.replace(" ", "_") for n in NAMES]
    df = pd.DataFrame(np.full((4, len(NAMES)), 0.7, np.float32), columns=columns)
    import lightgbm
    import xgboost

    scope = {"xgboost": xgboost, "lightgbm": lightgbm, "df": df}
    assert eval(line, scope).shape == (4,)  # noqa: S307 (the card's own line)
    with pytest.raises(Exception, match="mismatch|Expected"):
        eval(line, {**scope, "df": df[df.columns[::-1]]})  # noqa: S307
