"""A silo's vertical role in silo.toml, and the agent's own checks of a vertical run before
it takes part: each refusal names the silo and what to change."""

from __future__ import annotations

from pathlib import Path

import pytest

from schemas.vertical import VerticalParams, VerticalRunOut
from silos.config import load_silo_config
from silos.exceptions import SiloConfigError
from silos.vertical.agent_flow import refusal, run_folder

BASE = """
[silo]
name = "bureau"
federation = "credit"

[data]
path = "table.csv"
contract = "credit_default"

[service]
urls = ["http://127.0.0.1:8700"]
"""
VERTICAL = '\n[vertical]\ncontract = "mine.toml"\npredict_data = "new.csv"\nmax_trees = 4\n'


def config(tmp_path: Path, text: str):  # type: ignore[no-untyped-def]
    path = tmp_path / "silo.toml"
    path.write_text(text)
    return load_silo_config(path)


def run(mode: str = "train", trees: int = 3, model_run: str | None = None) -> VerticalRunOut:
    return VerticalRunOut(
        run_id="r" * 32,
        federation="credit",
        active="bank",
        parties=["bank", "bureau"],
        status="running",
        mode=mode,  # type: ignore[arg-type]
        params=VerticalParams(trees=trees),
        model_run=model_run,
    )


def test_vertical_section_resolves_paths_and_defaults_to_the_data(tmp_path: Path) -> None:
    cfg = config(tmp_path, BASE + VERTICAL)
    base = tmp_path.resolve()
    assert cfg.vertical is not None
    assert cfg.vertical.contract == str(base / "mine.toml")  # a path, next to silo.toml
    assert (cfg.vertical.data, cfg.vertical.predict_data) == (base / "table.csv", base / "new.csv")
    named = config(tmp_path, BASE + '\n[vertical]\ncontract = "credit_vertical_bureau"\n')
    assert named.vertical is not None and named.vertical.contract == "credit_vertical_bureau"
    assert config(tmp_path, BASE).vertical is None
    with pytest.raises(SiloConfigError, match="vertical.max_trees"):
        config(tmp_path, BASE + VERTICAL.replace("max_trees = 4", "max_trees = 0"))


def test_agent_refuses_what_its_policy_does_not_allow(tmp_path: Path) -> None:
    cfg = config(tmp_path, BASE + VERTICAL)
    assert refusal(cfg, run(trees=4)) is None
    assert "allows at most 4 trees" in (refusal(cfg, run(trees=5)) or "")
    none = config(tmp_path, BASE)
    assert "'bureau' has no [vertical] section" in (refusal(none, run()) or "")
    no_rows = config(tmp_path, BASE + '\n[vertical]\ncontract = "x"\n')
    wants = run().model_copy(update={"params": VerticalParams(predict=True)})
    assert "set [vertical] predict_data" in (refusal(no_rows, wants) or "")
    assert refusal(no_rows, run(mode="psi_size", trees=500)) is None  # counts only, no trees


def test_agent_refuses_a_vertical_model_or_epochs_its_policy_does_not_allow(
    tmp_path: Path,
) -> None:
    lr = run().model_copy(update={"params": VerticalParams(model="logreg", epochs=7)})
    assert refusal(config(tmp_path, BASE + VERTICAL), lr) is None  # both models by default
    only_trees = config(tmp_path, BASE + VERTICAL + 'models = ["secureboost"]\n')
    assert "'bureau' trains secureboost in vertical runs ([vertical] models); run" in (
        refusal(only_trees, lr) or ""
    )
    assert refusal(only_trees, run(trees=4)) is None
    few = config(tmp_path, BASE + VERTICAL + "max_epochs = 6\n")
    assert "allows at most 6 epochs ([vertical] max_epochs)" in (refusal(few, lr) or "")
    with pytest.raises(SiloConfigError, match="vertical.models"):
        config(tmp_path, BASE + VERTICAL + 'models = ["gbdt"]\n')


def test_prediction_needs_the_model_half_this_silo_kept(tmp_path: Path) -> None:
    cfg = config(tmp_path, BASE + VERTICAL)
    pred = run(mode="predict", model_run="t" * 32)
    assert f"no model half of vertical run {'t' * 32}" in (refusal(cfg, pred) or "")
    folder = run_folder(cfg, "t" * 32)
    folder.mkdir(parents=True)
    (folder / "traffic.json").write_text("{}")  # what a finished party leaves last
    assert refusal(cfg, pred) is None
