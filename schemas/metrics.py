"""Holdout-size-weighted means of silo metrics: one rule for the service's ledger, the
coordinator's round table and every report."""

from __future__ import annotations

from collections.abc import Iterable

from schemas.wire import Metrics

METRIC_NAMES = ("loss", "accuracy", "auc", "f1_macro", "rmse", "mae", "r2")


def weighted_metric(metrics: Iterable[Metrics], name: str) -> float | None:
    """Mean of metric `name` over silos that reported it, weighted by each holdout's size.

    Silos that did not report it (None, e.g. ROC AUC on a single-class holdout) are left out
    of both the sum and the weights; None when no silo reported it or every holdout is empty.
    """
    pairs = [(getattr(m, name), m.n_test) for m in metrics]
    pairs = [(v, n) for v, n in pairs if v is not None]
    total = sum(n for _, n in pairs)
    if not pairs or total == 0:
        return None
    return sum(v * n for v, n in pairs) / total


def weighted_metrics(metrics: Iterable[Metrics]) -> dict[str, float | None]:
    """Every metric of `METRIC_NAMES` weighted by holdout size, plus ``n_test`` (the total)."""
    ms = list(metrics)
    out: dict[str, float | None] = {k: weighted_metric(ms, k) for k in METRIC_NAMES}
    out["n_test"] = sum(m.n_test for m in ms)
    return out
