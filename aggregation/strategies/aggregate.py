"""Aggregation arithmetic as free functions over numpy arrays."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def weighted_sum(
    updates: Sequence[Sequence[np.ndarray]], weights: Sequence[float]
) -> list[np.ndarray]:
    """sum_k w_k * u_k per array, accumulated in float64 so the order of updates does not matter
    beyond float64 rounding."""
    if not updates:
        raise ValueError("no updates to aggregate")
    if len(updates) != len(weights):
        raise ValueError(f"{len(updates)} updates but {len(weights)} weights")
    totals = [np.zeros(a.shape, dtype=np.float64) for a in updates[0]]
    for update, w in zip(updates, weights, strict=True):
        for total, arr in zip(totals, update, strict=True):
            total += float(w) * arr.astype(np.float64, copy=False)
    return totals


def weighted_mean(
    updates: Sequence[Sequence[np.ndarray]], weights: Sequence[float]
) -> list[np.ndarray]:
    """Example-weighted mean of updates: sum_k n_k u_k / sum_k n_k, as float32."""
    if not updates:
        raise ValueError("no updates to aggregate")
    total_weight = float(sum(weights))
    if total_weight <= 0:
        raise ValueError(f"weights must sum to a positive number, got {total_weight}")
    return [(t / total_weight).astype(np.float32) for t in weighted_sum(updates, weights)]


def apply_mean_delta(
    params: Sequence[np.ndarray], mean_delta: Sequence[np.ndarray], server_lr: float
) -> list[np.ndarray]:
    """w + server_lr * mean_delta, as float32 (FedAvg's and FedProx's server step)."""
    lr = np.float32(server_lr)
    return [(w + lr * d).astype(np.float32) for w, d in zip(params, mean_delta, strict=True)]
