"""Silo-level DP: noise calibration, RDP accounting across runs, and the budget refusal."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from schemas.specs import ModelSpec, PrivacySpec, RunSpec
from schemas.tasks import SecAggInfo, SecAggMaskedTask
from silos import privacy
from silos.config import SiloConfig, load_silo_config
from silos.handlers.secagg import clip_and_noise
from silos.handlers.training import Trained, privacy_refusal

SPEC = PrivacySpec(noise_multiplier=1.0, clip_norm=0.5, delta=1e-5)


def test_each_silo_adds_its_share_so_the_sum_carries_sigma_c() -> None:
    n = 4
    draws = np.stack([privacy.gaussian_noise(SPEC, n, 200_000) for _ in range(n)])
    total_std = float(draws.sum(axis=0).std())
    assert abs(total_std - SPEC.noise_multiplier * SPEC.clip_norm) < 0.01


def _masked_task(roster: list[str], threshold: int) -> SecAggMaskedTask:
    spec = RunSpec(
        federation="f",
        dataset="heart_disease",
        model=ModelSpec(kind="logreg", n_features=3),
        privacy=SPEC,
    )
    info = SecAggInfo(
        stage="masked", roster=roster, roster_keys={}, threshold=threshold, dim=4, bits=32,
        clip=SPEC.clip_norm,
    )  # fmt: skip
    return SecAggMaskedTask(run_id="r1", round=1, spec=spec, secagg=info)


def test_a_sum_of_only_threshold_survivors_still_carries_sigma_c() -> None:
    """Five silos on the roster, threshold 3: the service may unmask the sum of 3 once two
    drop out after masking. Noise sized for the roster (sigma C / sqrt(5) each) would leave
    sigma C sqrt(3/5) = 0.39 in that sum; sized for the threshold it keeps sigma C = 0.5."""
    task = _masked_task(["a", "b", "c", "d", "e"], threshold=3)
    trained = Trained(
        delta=[np.zeros(200_000, dtype=np.float32)], n_examples=1, seconds=0.0, metrics=None
    )
    survivors = np.stack([clip_and_noise(None, task, trained) for _ in range(3)])  # type: ignore[arg-type]
    sigma_c = SPEC.noise_multiplier * SPEC.clip_norm
    assert abs(float(survivors.sum(axis=0).std()) - sigma_c) < 0.01


def test_epsilon_grows_with_rounds_and_matches_a_known_value(tmp_path: Path) -> None:
    eps = [privacy.epsilon({1.0: r}, 1e-5) for r in (1, 5, 10)]
    assert eps[0] < eps[1] < eps[2]
    assert 18.5 < eps[2] < 19.5  # RDP Gaussian, sigma 1, 10 rounds, delta 1e-5 (dp-accounting)


def _config(tmp_path: Path, policy: str = "") -> SiloConfig:
    cfg_path = tmp_path / "silo.toml"
    cfg_path.write_text(
        '[silo]\nname = "a"\nfederation = "f"\n[data]\npath = "d.csv"\ncontract = "heart_disease"\n'
        '[service]\nurls = ["http://127.0.0.1:1"]\n' + policy
    )
    return load_silo_config(cfg_path)


def test_budget_spans_runs(tmp_path: Path) -> None:
    config = _config(tmp_path)
    for i in range(5):
        privacy.record_round(config, "run-a", SPEC, f"{i + 1}:m")
    after_a = privacy.epsilon_if(config, "run-b", SPEC, 0)
    with_b = privacy.epsilon_if(config, "run-b", SPEC, 5)
    assert abs(after_a - privacy.epsilon({1.0: 5}, 1e-5)) < 1e-9
    assert abs(with_b - privacy.epsilon({1.0: 10}, 1e-5)) < 1e-9


def test_a_round_over_the_policy_budget_is_refused_with_the_numbers(tmp_path: Path) -> None:
    config = _config(tmp_path, "[policy]\nmax_epsilon = 8.0\n")
    task = _masked_task(["a", "b"], threshold=2)
    assert privacy_refusal(config, task) is None  # one round: epsilon ~4.7 <= 8
    privacy.record_round(config, "r1", SPEC, "1:m")
    privacy.record_round(config, "r1", SPEC, "2:m")
    problem = privacy_refusal(config, task.model_copy(update={"round": 3}))
    assert problem is not None and "allows at most 8" in problem and "epsilon to 9.0" in problem


def test_the_budget_is_counted_at_the_policys_delta_not_a_looser_runs(tmp_path: Path) -> None:
    """Ten rounds at noise multiplier 1 spend epsilon 19.05 at delta 1e-5 but only 2.25 at
    delta 0.99: a coordinator asking for delta 0.99 must not fit four times the rounds under
    the silo's cap."""
    config = _config(tmp_path, "[policy]\nmax_epsilon = 10.0\n")
    loose = PrivacySpec(noise_multiplier=1.0, clip_norm=0.5, delta=0.99)
    assert privacy.budget_delta(config, loose) == 1e-5
    for r in range(1, 5):
        privacy.record_round(config, "r1", loose, f"{r}:m")
    assert privacy.epsilon_if(config, "r1", loose, 0) == pytest.approx(
        privacy.epsilon({1.0: 4}, 1e-5)
    )
    task = _masked_task(["a", "b"], threshold=2).model_copy(update={"round": 5})
    task = task.model_copy(update={"spec": task.spec.model_copy(update={"privacy": loose})})
    problem = privacy_refusal(config, task)
    assert problem is not None and "(delta 1e-05)" in problem and "at most 10" in problem
    (tmp_path / "strict").mkdir()
    stricter = _config(tmp_path / "strict", "[policy]\nmax_epsilon = 10.0\ndelta = 1e-8\n")
    assert privacy.budget_delta(stricter, SPEC) == 1e-8
