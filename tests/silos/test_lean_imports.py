"""Lean agents (issue 20): a silo agent imports only what its runs need.

Each check runs in a fresh interpreter (this test process has imported everything already) and
reads that interpreter's `sys.modules`. An idle agent must not hold torch, scikit-learn,
dp-accounting or the boosting libraries; a tree-only round must not pull in torch; a PyTorch
round does (which shows the check can fail). The real processes are measured by
bench/agent_memory.py (tests/bench/test_agent_memory_smoke.py).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
MODEL_LIBRARIES = {"torch", "sklearn", "dp_accounting", "xgboost", "lightgbm", "mlflow"}
NOT_AT_IDLE = MODEL_LIBRARIES | {"matplotlib", "great_expectations"}


def _packages_by_stage(code: str) -> dict[str, set[str]]:
    """Top-level packages a fresh interpreter holds at each `stage("name")` call in `code`."""
    prelude = (
        "import json, sys\n"
        "def stage(name):\n"
        "    print(json.dumps([name, sorted(sys.modules)]), flush=True)\n"
    )
    stages = _json_lines(prelude + code)
    return {name: {m.split(".")[0] for m in modules} for name, modules in stages}


def _json_lines(code: str) -> list[list[Any]]:
    """Run `code` in a fresh interpreter; the JSON lists it printed, one per line."""
    env = {**os.environ, "DO_NOT_TRACK": "1", "GX_ANALYTICS_ENABLED": "false"}
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return [json.loads(line) for line in done.stdout.splitlines() if line.startswith('["')]


def test_cli_entry_point_loads_no_agent_libraries() -> None:
    """`fedsilo silo start` pays for the agent's imports only once the subcommand runs."""
    packages = _packages_by_stage("import flows.cli\nstage('cli')")["cli"]
    assert {"flows", "typer"} <= packages
    assert not packages & (NOT_AT_IDLE | {"prefect", "pandas"}), sorted(packages & NOT_AT_IDLE)


# one interpreter, as one agent lives: imported, a tree round per library, then a PyTorch round
AGENT_LIFE = """
import numpy as np
import silos.agent, silos.handlers, silos.warmup
stage("idle")

from schemas.tree_params import TreeSpec
from silos.tree_trainer import build_update, evaluate_trees, train_trees

rng = np.random.default_rng(0)
X = rng.normal(size=(200, 4)).astype(np.float32)
y = (X[:, 0] > 0).astype(np.float32)
for kind, params in (("xgboost", {"max_depth": 3}), ("lightgbm", {"num_leaves": 7})):
    spec = TreeSpec(kind=kind, n_features=4, trees_per_round=2, params=params)
    result = train_trees(spec, None, X, y)
    build_update(result, spec, run_id="r", round_num=1, silo="a", global_model=None)
    assert evaluate_trees(spec, result.model, X, y).accuracy > 0.8
stage("trees")

from schemas.specs import ModelSpec, TrainingSpec
from silos.torch_model import build_model, get_params
from silos.trainer import train_local

spec = ModelSpec(kind="logreg", n_features=4)
train_local(spec, get_params(build_model(spec, seed=0)), X, y, TrainingSpec())
stage("torch")
"""


def test_agent_loads_model_libraries_only_for_their_runs() -> None:
    stages = _packages_by_stage(AGENT_LIFE)
    idle, trees, torch = stages["idle"], stages["trees"], stages["torch"]
    assert {"silos", "prefect", "pandas"} <= idle  # the agent really was imported
    assert not idle & NOT_AT_IDLE, sorted(idle & NOT_AT_IDLE)
    assert {"xgboost", "lightgbm"} <= trees  # the tree rounds really trained
    assert "torch" not in trees
    assert "torch" in torch  # a PyTorch round does load it: the check above can fail
    # torch.optim's optimizers import torch._dynamo, and with it sympy and mpmath (~70 MB);
    # silos.optim's do not
    assert not torch & {"sympy", "mpmath"}, sorted(torch & {"sympy", "mpmath"})


# a PyTorch silo's round: train, then evaluate binary and multiclass models on held-out rows
TORCH_ROUND = """
import numpy as np
import silos.agent, silos.handlers
from schemas.specs import ModelSpec, TrainingSpec
from silos.torch_model import build_model, get_params
from silos.trainer import evaluate, train_local

rng = np.random.default_rng(0)
X = rng.normal(size=(200, 4)).astype(np.float32)
for task, y in (("binary", (X[:, 0] > 0)), ("multiclass", np.digitize(X[:, 0], [-0.5, 0.5]))):
    spec = ModelSpec(kind="logreg", n_features=4, task=task, n_outputs=1 if task == "binary" else 3)
    labels = y.astype(np.float32)
    params = train_local(spec, get_params(build_model(spec, seed=0)), X, labels, TrainingSpec())
    metrics = evaluate(spec, params.params, X, labels)
    assert (metrics.auc if task == "binary" else metrics.f1_macro) is not None, (task, metrics)
stage("evaluated")
"""


def test_a_pytorch_round_evaluates_without_scikit_learn() -> None:
    """ROC AUC and macro-F1 are numpy (schemas.task_metrics): scikit-learn with scipy costs an
    agent ~2 s of CPU and ~160 MB at its first evaluation."""
    packages = _packages_by_stage(TORCH_ROUND)["evaluated"]
    assert "torch" in packages
    assert not packages & {"sklearn", "scipy"}, sorted(packages & {"sklearn", "scipy"})


# an agent's validation, then a module that does use GX's deferred imports
DEFERRED = """
import json, sys, tempfile
from pathlib import Path
import silos.agent, silos.gx_runner
from schemas.contracts import load_contract
from silos.deferred_imports import is_deferred
from silos.demo_data import heart_disease_silos
from silos.gate import run_gate

def stage(name):
    real = [m for m in sys.modules if m.startswith(("altair.", "scipy.stats."))]
    print(json.dumps([name, is_deferred("altair"), is_deferred("scipy.stats"), len(real)]))

stage("imported")
frame = heart_disease_silos()["cleveland"]
assert run_gate(frame, load_contract("heart_disease"), silo="cleveland",
                workspace=Path(tempfile.mkdtemp())).success
stage("validated")
from great_expectations.expectations.core import expect_column_kl_divergence_to_be_less_than as kl
assert kl.stats.norm.cdf(0.0) == 0.5 and kl.alt.Chart is sys.modules["altair"].Chart
stage("used")
"""


def test_gx_loads_altair_and_scipy_stats_only_when_used() -> None:
    """Great Expectations' KL-divergence expectation imports altair and scipy.stats (~75 MB);
    an agent that validates its table with the contract's suite never loads them, and code
    that reads them gets the real modules."""
    rows = _json_lines(DEFERRED)
    by_stage = {name: (alt, stats, loaded) for name, alt, stats, loaded in rows}
    assert by_stage["imported"] == (True, True, 0)
    assert by_stage["validated"] == (True, True, 0)  # the suite, its data docs: neither used
    alt, stats, loaded = by_stage["used"]
    assert (alt, stats) == (False, False) and loaded > 10  # replaced by the real modules
