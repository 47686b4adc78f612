"""Silo-level differential privacy: Gaussian noise on the clipped update, RDP accounting.

Each silo clips its delta to C (L2) and adds N(0, (sigma C)^2 / n) per coordinate, so the
securely aggregated sum of n silos carries N(0, (sigma C)^2): the Gaussian mechanism with
noise multiplier sigma on a sum whose sensitivity to one silo is C. Every round every silo
takes part (no sampling amplification), so a run of r rounds composes r Gaussian mechanisms;
the silo's total across all runs is accounted with RDP (Google's `dp-accounting`) and
converted to epsilon at the policy's delta.

The noise comes from numpy's PCG64 seeded with 128 bits from the OS per call: statistically
sound Gaussian noise; it is not a cryptographic generator (floating-point side channels of
noise sampling are out of scope, as in most DP-FL systems).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import dp_accounting
import numpy as np
from dp_accounting.rdp import rdp_privacy_accountant

from schemas.specs import PrivacySpec


def gaussian_noise(spec: PrivacySpec, n_silos: int, size: int) -> np.ndarray:
    """This silo's share of the noise: std sigma * C / sqrt(n)."""
    std = spec.noise_multiplier * spec.clip_norm / math.sqrt(max(n_silos, 1))
    rng = np.random.Generator(np.random.PCG64(int.from_bytes(os.urandom(16), "big")))
    return rng.normal(0.0, std, size)


def epsilon(rounds_by_sigma: dict[float, int], delta: float) -> float:
    """Epsilon at `delta` after composing `count` Gaussian rounds for each noise multiplier."""
    accountant = rdp_privacy_accountant.RdpAccountant()
    for sigma, count in rounds_by_sigma.items():
        if count:
            accountant.compose(dp_accounting.GaussianDpEvent(sigma), count)
    return float(accountant.get_epsilon(delta))


def _budget_path(workspace: Path) -> Path:
    return workspace / "privacy" / "spent.json"


def spent_rounds(workspace: Path) -> dict[str, dict[str, float]]:
    """run_id -> {"sigma": noise multiplier, "rounds": rounds this silo contributed}."""
    path = _budget_path(workspace)
    return json.loads(path.read_text()) if path.exists() else {}


def epsilon_if(workspace: Path, run_id: str, spec: PrivacySpec, extra_rounds: int) -> float:
    """The silo's total epsilon if it contributes `extra_rounds` more rounds to `run_id`."""
    counts: dict[float, int] = {}
    for rid, entry in spent_rounds(workspace).items():
        n = int(entry["rounds"]) + (extra_rounds if rid == run_id else 0)
        counts[float(entry["sigma"])] = counts.get(float(entry["sigma"]), 0) + n
    if run_id not in spent_rounds(workspace):
        counts[spec.noise_multiplier] = counts.get(spec.noise_multiplier, 0) + extra_rounds
    return epsilon(counts, spec.delta)


def record_round(workspace: Path, run_id: str, spec: PrivacySpec) -> None:
    """Count one more noised round of `run_id` against this silo's budget (before sending)."""
    data = spent_rounds(workspace)
    entry = data.setdefault(run_id, {"sigma": spec.noise_multiplier, "rounds": 0})
    entry["rounds"] = int(entry["rounds"]) + 1
    path = _budget_path(workspace)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True))
    tmp.replace(path)
