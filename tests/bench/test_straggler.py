"""bench/_straggler.py: the slow silo's calibration in bench/async_rounds.py.

The round times are read from a database with the service's own tables (so a renamed column
breaks this test, not the bench at minute ten), and the arithmetic makes a round 5x longer.
"""

from __future__ import annotations

import sys
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import create_engine
from sqlalchemy.orm import Session

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from aggregation.service.tables import Base, Contribution, Round  # noqa: E402
from bench import _straggler as straggler  # noqa: E402

T0 = datetime(2026, 1, 1, 12, 0, 0)


def _db(tmp_path: Path, received: dict[tuple[str, int], float]) -> Path:
    """A service database whose run `r1` got each (silo, round)'s update `s` seconds after
    its round opened (round n opens at T0 + 100 n)."""
    path = tmp_path / "service.db"
    engine = create_engine(f"sqlite:///{path}")
    Base.metadata.create_all(engine)
    with Session(engine) as s:
        for n in sorted({n for _, n in received}):
            opened = T0 + timedelta(seconds=100 * n)
            s.add(Round(run_id="r1", number=n, kind="train", status="aggregated",
                        opened_at=opened, deadline_at=opened + timedelta(hours=1)))  # fmt: skip
        for (silo, n), secs in received.items():
            at = T0 + timedelta(seconds=100 * n + secs)
            s.add(Contribution(run_id="r1", round=n, silo=silo, kind="update", received_at=at))
        s.add(Contribution(run_id="r1", round=1, silo="x", kind="refusal", received_at=T0))
        s.commit()
    engine.dispose()
    return path


def test_round_times_calibration_and_observed_ratio(tmp_path: Path) -> None:
    received = {("a", 1): 9.0, ("b", 1): 8.0, ("slow", 1): 9.5}  # round 1: cold start
    received |= {("a", 2): 2.0, ("b", 2): 3.0, ("slow", 2): 12.5}
    received |= {("a", 3): 2.5, ("b", 3): 2.5, ("slow", 3): 12.5}
    per_silo = straggler.silo_round_seconds(_db(tmp_path, received), "r1")
    assert per_silo["a"] == {1: 9.0, 2: 2.0, 3: 2.5}
    assert "x" not in per_silo  # a refusal is no update
    fast = straggler.fast_round_seconds(per_silo, "slow", first_round=2)
    assert fast == 2.5  # median of 2.0, 3.0, 2.5, 2.5; the slow silo and round 1 left out
    delay = straggler.slow_delay(fast, 5.0)
    assert delay == 10.0
    assert (fast + delay) / fast == 5.0
    # rounds 2 and 3: 12.5 / 2.5 = 5.0 each; round 1: 9.5 / 8.5
    assert straggler.observed_ratio(per_silo, "slow") == 5.0


def test_bad_input_is_named(tmp_path: Path) -> None:
    db = _db(tmp_path, {("a", 1): 1.0})
    with pytest.raises(ValueError, match="run r2: no updates"):
        straggler.silo_round_seconds(db, "r2")
    with pytest.raises(ValueError, match="no fast silo's round at or after round 2"):
        straggler.fast_round_seconds({"a": {1: 1.0}}, "slow", first_round=2)
    with pytest.raises(ValueError, match="slowdown 0.5"):
        straggler.slow_delay(1.0, 0.5)
    with pytest.raises(ValueError, match="silo slow shares no round"):
        straggler.observed_ratio({"a": {1: 1.0}, "slow": {2: 5.0}}, "slow")
