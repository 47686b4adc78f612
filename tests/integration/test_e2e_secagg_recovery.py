"""Secure aggregation recovers a silo killed after it shared its keys: four agents over HTTP, a
federation of its own, in a file of its own so that pytest-xdist runs it beside the other
federation tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from support.fault_helpers import (
    MODEL,
    TRAINING,
    current_round,
    join,
    secagg_sent,
    start_federation,
    train_in_thread,
)

from schemas import tensors
from schemas.specs import param_shapes

pytestmark = [pytest.mark.integration, pytest.mark.timeout(1800)]


def test_silo_killed_after_sharing_keys_is_recovered_by_secure_aggregation(
    tmp_path: Path, prefect_api_url: str
) -> None:
    """Four agents over HTTP; Switzerland's agent is kill -9'ed after it shared its keys. The
    round completes from the three survivors and equals their plain FedAvg within the
    quantization bound (training as `support.fault_helpers.train` sets it)."""
    import sqlite3

    from silos.config import load_silo_config
    from silos.local_data import prepare_local_data
    from silos.trainer import train_local

    fed = start_federation(tmp_path, prefect_api_url, slow="switzerland")
    survivors = ["cleveland", "hungary", "va_long_beach"]
    # an upper bound only: the test closes the stage itself once the survivors have answered
    thread, outcome = train_in_thread(
        fed.urls, fed.token, tmp_path / "models", rounds=1, min_silos=3, deadline_s=900
    )

    def victim_shared() -> tuple[str, int] | None:
        now = current_round(fed)
        if now is None or not secagg_sent(fed.db_url, now[0], now[1], "share", "switzerland"):
            return None
        return now[0], now[1]

    try:
        run_id, number = fed.wait(victim_shared, "switzerland to share its keys", poll_s=0.01)
        fed.agents["switzerland"].kill9()
        fed.wait(
            lambda: all(secagg_sent(fed.db_url, run_id, number, "masked", s) for s in survivors),
            "the survivors' masked updates",
        )
        # what the round's deadline would do, without waiting for it: close the masked stage,
        # so the service asks the survivors to unmask without Switzerland
        fed.coord.close_round(run_id, number)

        def evaluation_awaits_only_the_victim() -> tuple[str, int] | bool | None:
            # the run's evaluation round waits for Switzerland too: the deadline would close it
            if not thread.is_alive():
                return True
            now = current_round(fed)
            if now is None or now[1] == number or now[3] != "open":
                return None
            rnd = next(r for r in fed.coord.rounds(run_id) if r.round == now[1])
            return (run_id, now[1]) if rnd.awaited == ["switzerland"] else None

        evaluation = fed.wait(evaluation_awaits_only_the_victim, "the survivors' evaluations")
        if evaluation is not True:
            fed.coord.close_round(*evaluation)
        result = join(thread, outcome, fed)
    finally:
        fed.stop()
    db = tmp_path / "service" / "service.db"
    first = result["rounds"][0]
    assert sorted(first["contributors"]) == ["cleveland", "hungary", "va_long_beach"]
    with sqlite3.connect(db) as conn:
        kinds = [k for (k,) in conn.execute("SELECT kind FROM ledger_entries")]
        v0, v1 = (
            conn.execute("SELECT payload FROM models WHERE version = ?", (v,)).fetchone()[0]
            for v in (0, 1)
        )
    assert "dropout" in kinds and "recovery" in kinds
    shapes = param_shapes(MODEL)
    start = tensors.decode_expected(v0, shapes)[0]
    got = tensors.decode_expected(v1, shapes)[0]
    # the survivors' own deltas, recomputed exactly as their agents did (deterministic training)
    weighted, total = [np.zeros_like(a, dtype=np.float64) for a in start], 0
    for name in survivors:
        data = prepare_local_data(load_silo_config(tmp_path / "silos" / name / "silo.toml"))
        trained = train_local(
            MODEL,
            start,
            data.X_train,
            data.y_train,
            TRAINING.model_copy(update={"seed": TRAINING.seed + 1}),
        )
        for acc, new, old in zip(weighted, trained.params, start, strict=True):
            acc += len(data.y_train) * (new - old)
        total += len(data.y_train)
    for g, w0, acc in zip(got, start, weighted, strict=True):
        np.testing.assert_allclose(g, w0 + acc / total, atol=1e-5)
