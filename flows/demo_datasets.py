"""The demo federations: which data, contract, run settings and words each one uses.

Each demo has a binary dataset and a second one of another task kind (issue 14): the hospitals
`diabetes` (regression), the banks `delinquency` (multiclass).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pandas as pd

from flows.demo_config import (
    credit_demo_spec,
    delinquency_demo_spec,
    diabetes_demo_spec,
    heart_demo_spec,
)
from schemas.specs import RunSpec
from silos.demo_data import credit_default_silos, heart_disease_silos
from silos.demo_data_tasks import credit_delinquency_silos, diabetes_silos


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
    "diabetes": DemoDataset(
        key="diabetes",
        contract="diabetes_progression",
        federation="clinics",
        title="three clinics, diabetes progression (regression; split by age band)",
        member="clinic",
        frames=diabetes_silos,
        spec=diabetes_demo_spec,
    ),
    "delinquency": DemoDataset(
        key="delinquency",
        contract="credit_delinquency",
        federation="banks",
        title="five banks, credit-card delinquency grade (multiclass; credit-limit bands)",
        member="bank",
        frames=credit_delinquency_silos,
        spec=delinquency_demo_spec,
    ),
}
