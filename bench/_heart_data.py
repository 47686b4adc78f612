"""The heart-disease task's data and models, prepared once by fedsilo's own code for both sides.

Each hospital's rows are split and encoded exactly as fedsilo's silo agent does it
(`flows.baselines.prepare_silo_arrays`: stratified 25 % holdout with seed 42, the contract's
`FeaturePipeline`) and written to `<dir>/<hospital>.npz` (X_train, y_train, X_test, y_test,
float32) for the Flower app, whose venv has no fedsilo. The initial parameters of each model
(`build_model(spec, seed=0)`, what fedsilo's coordinator starts from) go to `init_<model>.npz`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from flows.baselines import SiloArrays, prepare_silo_arrays
from flows.demo_config import DEMO_SPLIT_SEED, DEMO_TEST_FRACTION, heart_demo_spec
from schemas.contracts import load_contract
from schemas.specs import ModelSpec, RunSpec, StrategySpec
from silos.demo_data import heart_disease_silos
from silos.features import FeaturePipeline
from silos.torch_model import build_model, get_params

CONTRACT = "heart_disease"
MLP_HIDDEN = (32,)  # `fedsilo demo --model mlp`
FEDADAM_SERVER_LR = 0.05  # `fedsilo demo --strategy fedadam`


@dataclass(frozen=True)
class Config:
    """One row of the comparison."""

    model: str  # logreg | mlp
    strategy: str  # fedavg | fedadam
    secure: bool

    @property
    def label(self) -> str:
        return f"{self.model}/{self.strategy}/{'secagg' if self.secure else 'plain'}"


def n_features() -> int:
    return FeaturePipeline.from_contract(load_contract(CONTRACT)).n_features


def run_spec(config: Config, rounds: int) -> RunSpec:
    """fedsilo's heart demo run with this row's model, strategy and secure aggregation."""
    base = heart_demo_spec(n_features())
    model = ModelSpec(
        kind=config.model,  # type: ignore[arg-type]
        n_features=base.model.n_features,
        hidden=MLP_HIDDEN if config.model == "mlp" else (),
    )
    strategy = (
        StrategySpec(name="fedadam", server_lr=FEDADAM_SERVER_LR)
        if config.strategy == "fedadam"
        else StrategySpec(name="fedavg")
    )
    return base.model_copy(
        update={
            "model": model,
            "strategy": strategy,
            "rounds": rounds,
            "min_silos": 4,
            # a shared 2-core machine under load can take a minute for the first round (the
            # agents' first validation imports Great Expectations); the deadline only fails runs
            "round_deadline_s": 900.0,
            "secure_aggregation": base.secure_aggregation.model_copy(
                update={"enabled": config.secure}
            ),
        }
    )


def silo_arrays() -> dict[str, SiloArrays]:
    return prepare_silo_arrays(
        heart_disease_silos(), load_contract(CONTRACT), DEMO_TEST_FRACTION, DEMO_SPLIT_SEED
    )


def export(folder: Path) -> dict[str, SiloArrays]:
    """Write every hospital's arrays and both models' initial parameters under `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    arrays = silo_arrays()
    for name, a in arrays.items():
        np.savez(
            folder / f"{name}.npz",
            X_train=a.X_train.astype(np.float32),
            y_train=a.y_train.astype(np.float32),
            X_test=a.X_test.astype(np.float32),
            y_test=a.y_test.astype(np.float32),
        )
    for kind in ("logreg", "mlp"):
        spec = run_spec(Config(kind, "fedavg", False), 1).model
        params = get_params(build_model(spec, seed=0))
        np.savez(folder / f"init_{kind}.npz", **{f"p{i}": p for i, p in enumerate(params)})
    return arrays
