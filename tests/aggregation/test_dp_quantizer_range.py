"""Under DP, secure aggregation's quantizer must hold the silos' noise, not only their deltas.

Each coordinate a silo quantizes is w * (u + e): |u| <= clip_norm and e its noise share. The
quantizer clamps every coordinate into [-c, c]; with c = clip_norm (as before) the noise was
truncated (8 % of the coordinates at a noise multiplier of 4 with 4 silos, half at 10), and the
sum the service unmasked carried less noise than the epsilon was counted for.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime

import numpy as np
import pytest

from aggregation.service import secure_rounds
from aggregation.service.tables import Round
from schemas.secagg.quantize import Quantizer
from schemas.specs import ModelSpec, PrivacySpec, RunSpec
from schemas.tasks import SecAggInfo, SecAggMaskedTask
from silos import privacy
from silos.handlers.training import noise_range_refusal

DP = PrivacySpec(noise_multiplier=4.0, clip_norm=0.5, delta=1e-5)
SPEC = RunSpec(
    federation="f",
    dataset="heart_disease",
    model=ModelSpec(kind="logreg", n_features=3),
    privacy=DP,
)
SILOS = ["a", "b", "c", "d"]  # threshold: a majority of 4, that is 3


def _round(doc: object) -> Round:
    return Round(
        run_id="r1",
        number=1,
        kind="train",
        deadline_at=datetime.now(UTC),
        secagg_stage="masked",
        roster_json=json.dumps(doc),
    )


def test_a_dp_round_quantizes_into_a_range_that_holds_the_noise() -> None:
    opened_now = _round({"silos": SILOS, "consistency_check": True, "dp_noise_range": True})
    assert secure_rounds.config(opened_now, SPEC).threshold == 3
    wide = secure_rounds.quantizer(opened_now, SPEC)
    assert wide.clip == DP.quantizer_clip(3)
    assert wide.clip == pytest.approx(0.5 + 9 * 4.0 * 0.5 / np.sqrt(3))
    # a round opened before the wider range keeps the clamp its silos quantized with
    opened_before = _round({"silos": SILOS, "consistency_check": True})
    assert secure_rounds.quantizer(opened_before, SPEC).clip == DP.clip_norm
    assert secure_rounds.quantizer(_round(SILOS), SPEC).clip == DP.clip_norm


def _unmasked_sum_std(clip: float, survivors: int, threshold: int, size: int) -> float:
    """The std of the dequantized sum of `survivors` silos' noise shares (deltas at 0), each
    weighted 1/4 and quantized as a silo does, summed as the service's unmasking does."""
    q = Quantizer(clip=clip, n_summands=len(SILOS), bits=32)
    total = np.zeros(size, dtype=np.uint32)
    for _ in range(survivors):
        share = privacy.gaussian_noise(DP, threshold, size) / len(SILOS)
        total += q.quantize(share)  # wraps mod 2^32, as the masked vectors' sum does
    return float(q.dequantize_sum(total).std())


def test_the_unmasked_sum_carries_the_whole_noise_after_dropouts() -> None:
    # three of four survive; the sum must carry sigma * C / 4 (the weights are 1/4)
    want = DP.noise_multiplier * DP.clip_norm / len(SILOS)
    got = _unmasked_sum_std(DP.quantizer_clip(3), survivors=3, threshold=3, size=100_000)
    assert abs(got / want - 1) < 0.02
    clamped = _unmasked_sum_std(DP.clip_norm, survivors=3, threshold=3, size=100_000)
    assert clamped < 0.95 * want  # the old range clamped 8 % of the coordinates (std -7 %)


def _task(clip: float) -> SecAggMaskedTask:
    info = SecAggInfo(
        stage="masked", roster=SILOS, roster_keys={}, threshold=3, dim=4, bits=32, clip=clip
    )
    return SecAggMaskedTask(run_id="r1", round=2, spec=SPEC, secagg=info)


def test_a_silo_refuses_a_range_that_would_clamp_its_noise() -> None:
    assert noise_range_refusal(_task(DP.quantizer_clip(3))) is None
    problem = noise_range_refusal(_task(DP.clip_norm))
    assert problem is not None
    assert "round 2" in problem and "clamp this silo's DP noise" in problem
    assert "upgrade the service" in problem
    plain = _task(0.5).model_copy(update={"spec": SPEC.model_copy(update={"privacy": None})})
    assert noise_range_refusal(plain) is None
