"""Federation-level metrics from the silos' own: one rule for the service's ledger, the
coordinator's round table and every report.

Loss, accuracy and MAE are means over rows, so their holdout-size-weighted mean is exactly the
score on all the silos' holdout rows together; so is RMSE, taken as the root of the weighted
mean of the silos' squared RMSEs (their MSEs). ROC AUC, macro-F1 and R² are not: a ranking,
per-class counts and each silo's own target variance do not add up across silos, and the
silos send only their scores. For those the figure is the silos' own scores averaged by
holdout size (`MEAN_OF_SILOS`), labelled so wherever it is shown: on the hospitals' demo it is
0.842 where the pooled AUC is 0.903.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

from schemas.wire import Metrics

METRIC_NAMES = ("loss", "accuracy", "auc", "f1_macro", "rmse", "mae", "r2")
MEAN_OF_SILOS = ("auc", "f1_macro", "r2")  # not the pooled score: see the module's doc


def federation_name(name: str) -> str:
    """How a federation-level metric is named where it is shown: "auc (silos' mean)"."""
    return f"{name} (silos' mean)" if name in MEAN_OF_SILOS else name


def weighted_metric(metrics: Iterable[Metrics], name: str) -> float | None:
    """Metric `name` over the silos that reported it: the mean weighted by each holdout's size
    (RMSE: the root of the weighted mean of squares, the pooled RMSE).

    Silos that did not report it (None, e.g. ROC AUC on a single-class holdout) are left out
    of both the sum and the weights; None when no silo reported it or every holdout is empty.
    """
    pairs = [(getattr(m, name), m.n_test) for m in metrics]
    pairs = [(v, n) for v, n in pairs if v is not None]
    total = sum(n for _, n in pairs)
    if not pairs or total == 0:
        return None
    if name == "rmse":
        return math.sqrt(sum(v * v * n for v, n in pairs) / total)
    return sum(v * n for v, n in pairs) / total


def weighted_metrics(metrics: Iterable[Metrics]) -> dict[str, float | None]:
    """Every metric of `METRIC_NAMES` weighted by holdout size, plus ``n_test`` (the total)."""
    ms = list(metrics)
    out: dict[str, float | None] = {k: weighted_metric(ms, k) for k in METRIC_NAMES}
    out["n_test"] = sum(m.n_test for m in ms)
    return out
