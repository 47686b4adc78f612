"""Four silos, one lost after sharing keys: the secure mean equals the plain mean."""

from __future__ import annotations

import numpy as np
from support.secagg_simulate import run_round

from schemas.secagg.config import RoundConfig
from schemas.secagg.crypto import generate_identity
from schemas.secagg.quantize import Quantizer


def test_four_silos_one_dropped_after_sharing_keys_matches_plain_mean():
    silos = ("bank-a", "bank-b", "hospital-c", "hospital-d")
    identities = {s: generate_identity() for s in silos}
    rng = np.random.default_rng(7)  # test data only; the protocol never uses numpy's generators
    d, clip = 5_000, 0.5
    updates = {s: (rng.standard_normal(d) * 0.1).astype(np.float32) for s in silos}
    updates["bank-b"][:10] = 3.0  # outliers are clipped to +-clip before quantization
    quant = Quantizer(clip, n_summands=len(silos), bits=32)
    quantized = {s: quant.quantize(u) for s, u in updates.items()}
    cfg = RoundConfig("run-demo", 1, silos, threshold=3, dim=d)

    report = run_round(cfg, quantized, identities, drop_after_share={"hospital-c"})

    assert report.survivors == ("bank-a", "bank-b", "hospital-d")
    assert report.dropped == ("hospital-c",)
    secure_mean = quant.dequantize_sum(report.total) / 3
    clipped = [np.clip(updates[s].astype(np.float64), -clip, clip) for s in report.survivors]
    plain_mean = np.mean(clipped, axis=0)
    bound = quant.sum_error_bound(3) / 3
    assert np.abs(secure_mean - plain_mean).max() < bound
    assert bound < 1e-8
    assert all(report.bytes_sent[s] > 4 * d for s in report.survivors)  # masked vectors
    assert report.bytes_sent["hospital-c"] < 4 * d  # keys and shares only
