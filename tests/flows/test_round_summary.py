"""The coordinator's per-round record: weighted metrics (schemas.metrics) and each silo's."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import pytest

from flows.coordinator import summarize_round
from schemas.wire import Metrics, RoundOut, SiloRoundState


def _round(silos: list[SiloRoundState]) -> RoundOut:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    return RoundOut(
        run_id="run-1",
        round=2,
        kind="train",
        status="closed",
        opened_at=now,
        deadline_at=now,
        complete=True,
        silos=silos,
        input_model_version=1,
    )


def test_summary_weights_by_holdout_and_keeps_every_scored_silo() -> None:
    out = _round(
        [
            SiloRoundState(
                silo="a",
                state="submitted",
                metrics=Metrics(n_test=30, loss=0.5, accuracy=0.8, auc=0.9),
                train_seconds=2.0,
            ),
            SiloRoundState(
                silo="b",
                state="submitted",
                metrics=Metrics(n_test=10, loss=0.7, accuracy=0.6, auc=None),
                train_seconds=3.0,
            ),
            SiloRoundState(silo="c", state="refused", reason="budget spent"),
            SiloRoundState(silo="d", state="waiting"),
        ]
    )

    record = summarize_round(out, wall_seconds=5.0)

    assert record.accuracy == pytest.approx(np.average([0.8, 0.6], weights=[30, 10]))
    assert record.loss == pytest.approx(np.average([0.5, 0.7], weights=[30, 10]))
    assert record.auc == pytest.approx(0.9)  # b reported no AUC: left out, not counted as 0
    assert record.per_silo == {
        "a": {"accuracy": 0.8, "auc": 0.9, "loss": 0.5},
        "b": {"accuracy": 0.6, "auc": None, "loss": 0.7},
    }
    assert record.contributors == ["a", "b"]
    assert record.refused == {"c": "budget spent"}
    assert record.waiting == ["d"]
    assert record.overhead_seconds == pytest.approx(2.0)
    assert record.evaluated_version == 1


def test_rmse_is_the_pooled_one_and_auc_is_labelled_as_the_silos_mean() -> None:
    """RMSE over two silos is the root of the pooled mean squared error (a mean of RMSEs is
    smaller); AUC cannot be pooled from scores, so the round table and the log say "mean"."""
    from rich.console import Console

    from flows.render import round_table
    from schemas.metrics import federation_name, weighted_metric

    rng = np.random.default_rng(0)
    errors = [rng.normal(0, 1, 40), rng.normal(0, 5, 10)]  # a: 40 rows, b: 10
    scored = [
        Metrics(n_test=len(e), loss=float(np.mean(e**2)), rmse=float(np.sqrt(np.mean(e**2))))
        for e in errors
    ]
    pooled = float(np.sqrt(np.mean(np.concatenate(errors) ** 2)))
    assert weighted_metric(scored, "rmse") == pytest.approx(pooled)
    assert pooled - np.average([m.rmse for m in scored], weights=[40, 10]) > 0.5  # type: ignore[misc]
    assert federation_name("auc") == "auc (silos' mean)" and federation_name("rmse") == "rmse"

    binary = _round(
        [
            SiloRoundState(
                silo="a",
                state="submitted",
                metrics=Metrics(n_test=30, loss=0.5, accuracy=0.8, auc=0.9),
            )
        ]
    )
    console = Console(record=True, width=200)
    console.print(round_table([binary]))
    text = console.export_text()
    assert "mean AUC" in text and "not the score on all rows" in text
