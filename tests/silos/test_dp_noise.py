"""DP noise from a CSPRNG: N(0, sigma^2) by moments and Kolmogorov–Smirnov, and no numpy
random generator anywhere on the way."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from schemas.specs import PrivacySpec
from silos import dp_noise, privacy

SPEC = PrivacySpec(noise_multiplier=1.3, clip_norm=0.7, delta=1e-5)
N = 100_000


def _forbid_numpy_random(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("numpy.random was used for DP noise")

    for name in (
        "Generator",
        "default_rng",
        "PCG64",
        "PCG64DXSM",
        "MT19937",
        "Philox",
        "SFC64",
        "RandomState",
        "normal",
        "standard_normal",
        "random",
        "rand",
        "randn",
        "seed",
    ):
        monkeypatch.setattr(np.random, name, refuse)


def test_noise_is_gaussian_with_the_silos_std_without_numpy_random(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _forbid_numpy_random(monkeypatch)
    n_silos = 3
    sigma = SPEC.noise_multiplier * SPEC.clip_norm / np.sqrt(n_silos)
    draws = privacy.gaussian_noise(SPEC, n_silos, N)
    assert draws.shape == (N,) and draws.dtype == np.float64
    # moments: standard errors at 1e5 draws are sigma/316 (mean) and sigma/224 (std)
    assert abs(draws.mean()) < 5 * sigma / np.sqrt(N)
    assert abs(draws.std() / sigma - 1) < 5 / np.sqrt(2 * N)
    assert abs(stats.skew(draws)) < 5 * np.sqrt(6 / N)
    assert abs(stats.kurtosis(draws)) < 5 * np.sqrt(24 / N)
    assert stats.kstest(draws, "norm", args=(0.0, sigma)).pvalue > 1e-3


def test_uniforms_have_53_bits_and_stay_in_the_unit_interval() -> None:
    u = dp_noise.uniforms(N, key=bytes(range(32)))
    assert u.min() >= 0.0 and u.max() < 1.0
    assert np.all(u * 2.0**53 == np.floor(u * 2.0**53))  # on the 2^-53 grid
    assert np.any(u * 2.0**52 != np.floor(u * 2.0**52))  # using the 53rd bit
    assert stats.kstest(u, "uniform").pvalue > 1e-3


def test_a_fixed_key_repeats_and_fresh_keys_differ() -> None:
    key = bytes(32)
    assert np.array_equal(dp_noise.gaussian(1.0, 11, key), dp_noise.gaussian(1.0, 11, key))
    assert not np.array_equal(dp_noise.gaussian(1.0, 11), dp_noise.gaussian(1.0, 11))
    assert dp_noise.gaussian(1.0, 0).shape == (0,)


@pytest.mark.parametrize("std", [-1.0, float("nan"), float("inf")])
def test_an_invalid_std_is_refused(std: float) -> None:
    with pytest.raises(ValueError, match="standard deviation"):
        dp_noise.gaussian(std, 4)
