"""The demo federations: which data, contract, run settings and words each one uses."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pandas as pd

from flows.demo_config import credit_demo_spec, heart_demo_spec
from schemas.specs import RunSpec
from silos.demo_data import credit_default_silos, heart_disease_silos


@dataclass(frozen=True)
class DemoDataset:
    key: str
    contract: str
    federation: str
    title: str
    member: str  # what one silo is called in the output
    frames: Callable[[], dict[str, pd.DataFrame]]
    spec: Callable[[int], RunSpec]


DATASETS = {
    "heart": DemoDataset(
        key="heart",
        contract="heart_disease",
        federation="heart",
        title="four hospitals, UCI heart disease",
        member="hospital",
        frames=heart_disease_silos,
        spec=heart_demo_spec,
    ),
    "credit": DemoDataset(
        key="credit",
        contract="credit_default",
        federation="banks",
        title="five banks, Taiwan credit default (split by credit-limit band)",
        member="bank",
        frames=credit_default_silos,
        spec=credit_demo_spec,
    ),
}
