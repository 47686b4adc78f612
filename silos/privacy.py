"""Silo-level differential privacy: Gaussian noise on the clipped update, RDP accounting.

Each silo clips its delta to C (L2) and adds N(0, (sigma C)^2 / t) per coordinate, t being the
round's secure-aggregation threshold: the fewest masked updates the service unmasks. Any sum
it releases holds at least t shares, so it carries at least N(0, (sigma C)^2), the Gaussian
mechanism with noise multiplier sigma on a sum whose sensitivity to one silo is C, however many
silos drop out before unmasking. (Dividing by the roster's size n instead would leave
sigma * sqrt(k / n) in a sum of k < n survivors, and the epsilon counted would be too low.)
Every round every silo takes part (no sampling amplification), so a run of r rounds composes r
Gaussian mechanisms; the silo's total across all runs is accounted with RDP (Google's
`dp-accounting`) and converted to epsilon at the policy's delta.

The noise comes from a cryptographic keystream (`silos.dp_noise`: ChaCha20 under a fresh
OS key per call, Box–Muller), not from numpy's predictable generators. The budget file is
signed with the silo's identity key (`silos.privacy_budget`): an edited one stops training.
"""

from __future__ import annotations

import hashlib
import math
from typing import Any

import numpy as np

from schemas.specs import PrivacySpec
from silos import dp_noise, privacy_budget
from silos.config import SiloConfig


def gaussian_noise(spec: PrivacySpec, min_summands: int, size: int) -> np.ndarray:
    """This silo's share of the noise, from a CSPRNG: std sigma * C / sqrt(t), where
    `min_summands` (t) is the fewest shares any released sum holds."""
    std = spec.noise_multiplier * spec.clip_norm / math.sqrt(max(min_summands, 1))
    return dp_noise.gaussian(std, size)


def epsilon(rounds_by_sigma: dict[float, int], delta: float) -> float:
    """Epsilon at `delta` after composing `count` Gaussian rounds for each noise multiplier."""
    # imported here: only a run with differential privacy pays for dp-accounting (lean agents)
    import dp_accounting
    from dp_accounting.rdp import rdp_privacy_accountant

    accountant = rdp_privacy_accountant.RdpAccountant()
    for sigma, count in rounds_by_sigma.items():
        if count:
            accountant.compose(dp_accounting.GaussianDpEvent(sigma), count)
    return float(accountant.get_epsilon(delta))


def spent_rounds(config: SiloConfig) -> dict[str, dict[str, Any]]:
    """run_id -> {"sigma": noise multiplier, "rounds": rounds this silo contributed,
    "released": the `release_id` of each (files written before it was kept lack it)}.

    Raises `silos.exceptions.PrivacyBudgetError` when the signed budget file was tampered with.
    """
    return dict(privacy_budget.load(config)["runs"])


def budget_delta(config: SiloConfig, spec: PrivacySpec) -> float:
    """The delta the silo's budget (policy max_epsilon) is counted at: its policy's, or the
    run's when smaller. Counting at the run's alone would let a coordinator loosen the cap."""
    return min(spec.delta, config.policy.delta)


def epsilon_if(config: SiloConfig, run_id: str, spec: PrivacySpec, extra_rounds: int) -> float:
    """The silo's total epsilon, at `budget_delta`, if it contributes `extra_rounds` more
    rounds to `run_id`."""
    spent = spent_rounds(config)
    counts: dict[float, int] = {}
    for rid, entry in spent.items():
        n = int(entry["rounds"]) + (extra_rounds if rid == run_id else 0)
        counts[float(entry["sigma"])] = counts.get(float(entry["sigma"]), 0) + n
    if run_id not in spent:
        counts[spec.noise_multiplier] = counts.get(spec.noise_multiplier, 0) + extra_rounds
    return epsilon(counts, budget_delta(config, spec))


def run_epsilon(config: SiloConfig, run_id: str, spec: PrivacySpec) -> float:
    """The epsilon this silo's releases to `run_id` alone spent (its other runs aside)."""
    entry = spent_rounds(config).get(run_id)
    rounds = int(entry["rounds"]) if entry else 0
    sigma = float(entry["sigma"]) if entry else spec.noise_multiplier
    return epsilon({sigma: rounds}, spec.delta) if rounds else 0.0


def sigma_changed(config: SiloConfig, run_id: str, spec: PrivacySpec) -> str | None:
    """Why `spec` cannot be accounted in `run_id`'s budget entry, or None: the entry keeps
    the noise multiplier of the run's first noised round and counts every later round at it,
    so a run whose spec changes it mid-way (a service that serves another spec) would be
    under-counted. Such a task is refused."""
    entry = spent_rounds(config).get(run_id)
    if entry is None or float(entry["sigma"]) == spec.noise_multiplier:
        return None
    return (
        f"run {run_id} noised its earlier rounds at noise multiplier {float(entry['sigma']):g} "
        f"and this task asks for {spec.noise_multiplier:g}: a run's noise multiplier never "
        "changes (this silo's budget counts every round at the first one's)"
    )


def release_id(round_: int, message: bytes) -> str:
    """What one noised release is known by in the budget: its round and its bytes' digest."""
    return f"{round_}:{hashlib.sha256(message).hexdigest()[:32]}"


def record_round(config: SiloConfig, run_id: str, spec: PrivacySpec, release: str) -> bool:
    """Count the noised message `release` (`release_id`) of `run_id` against this silo's
    budget, durably, before it is sent; True when it was not counted yet.

    Counting the same release again changes nothing: a resend after a restart repeats the
    saved message, which is one release. A round reopened after its state was erased sends a
    new message (another digest): that is a second release and counts (never under-count).
    """
    state = privacy_budget.load(config)
    entry = state["runs"].setdefault(run_id, {"sigma": spec.noise_multiplier, "rounds": 0})
    # the run's other DP parameters: what a privacy_spent statement a crash kept from the
    # service needs at the agent's next start (`silos.ledger_sync`), first round included
    entry.setdefault("delta", spec.delta)
    entry.setdefault("clip_norm", spec.clip_norm)
    released = entry.setdefault("released", [])
    if release in released:
        return False
    released.append(release)
    entry["rounds"] = int(entry["rounds"]) + 1
    privacy_budget.save(config, state)
    return True
