"""A small blood-pressure table and its drafted contract, for the gate's reference-statistics
checks: a second site passes, a site whose export swapped the two pressures drifts (in range,
wrong statistics)."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd

from flows.contract_draft import draft_contract
from schemas.contracts import Contract
from schemas.contracts.loader import load_contract_text


def vitals(n: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    systolic = rng.normal(130, 15, n).round()
    return pd.DataFrame(
        {
            "record": [f"r{i:05d}" for i in range(n)],
            "systolic": systolic,
            "diastolic": (systolic * 0.4 + rng.normal(28, 8, n)).round(),
            "smoker": rng.choice(["yes", "no"], n, p=[0.3, 0.7]),
            "outcome": rng.integers(0, 2, n),
        }
    )


def vitals_contract(on_drift: str = "error") -> Contract:
    """Drafted from one site, with the plausible range a steward would give blood pressures."""
    text = draft_contract(vitals(400, 0), name="vitals", target="outcome")
    text = re.sub(
        r'(name = "\w+stolic"\ntype = "numeric"\n)range = \[[^\]]*\]', r"\1range = [30, 250]", text
    )
    assert text.count("range = [30, 250]") == 2
    return load_contract_text(text.replace('on_drift = "error"', f'on_drift = "{on_drift}"'), "d")


def swapped(seed: int) -> pd.DataFrame:
    """Another site whose export swapped the two blood pressures: in range, wrong statistics."""
    return vitals(300, seed).rename(columns={"systolic": "diastolic", "diastolic": "systolic"})
