"""How slow the straggler in `bench/async_rounds.py` really is: a silo's round, measured.

A silo's round time = from the round's opening to the service receiving that silo's update
(plain: its update; secure: its masked update), read from the service's own records
(`rounds.opened_at`, `contributions.received_at`). It holds everything the federation waits
for: the task hand-out, the Prefect tasks, the validation gate, training, the secure stages
before the masked one. "One silo 5x slower" means its round time is 5x the others', so the
slow silo's extra delay is calibrated from the fast silos' measured round time rather than
set as 5x their training delay (which left the slow round only 1.2-1.5x longer).
"""

from __future__ import annotations

import sqlite3
import statistics
from datetime import datetime
from pathlib import Path

# silo -> round number -> seconds from the round's opening to that silo's update
RoundSeconds = dict[str, dict[int, float]]


def silo_round_seconds(db_path: Path, run_id: str) -> RoundSeconds:
    """Each silo's round time in each training round of `run_id` (the service's SQLite
    database, opened read-only)."""
    uri = f"file:{db_path.resolve()}?mode=ro"
    with sqlite3.connect(uri, uri=True) as db:
        rows = db.execute(
            "SELECT c.silo, r.number, r.opened_at, c.received_at FROM contributions c "
            "JOIN rounds r ON r.run_id = c.run_id AND r.number = c.round "
            "WHERE c.run_id = ? AND c.kind = 'update' AND r.kind = 'train'",
            (run_id,),
        ).fetchall()
    if not rows:
        raise ValueError(f"run {run_id}: no updates in {db_path}")
    out: RoundSeconds = {}
    for silo, number, opened, received in rows:
        seconds = (
            datetime.fromisoformat(received) - datetime.fromisoformat(opened)
        ).total_seconds()
        out.setdefault(silo, {})[int(number)] = seconds
    return out


def fast_round_seconds(per_silo: RoundSeconds, slow: str, first_round: int = 1) -> float:
    """The median round time of every silo but `slow`, over rounds >= `first_round`."""
    samples = [
        s for silo, rounds in per_silo.items() if silo != slow
        for n, s in rounds.items() if n >= first_round
    ]  # fmt: skip
    if not samples:
        raise ValueError(f"no fast silo's round at or after round {first_round}")
    return statistics.median(samples)


def slow_delay(fast_s: float, slowdown: float) -> float:
    """The extra seconds that make a round of `fast_s` take `slowdown` times as long."""
    if fast_s <= 0 or slowdown < 1:
        raise ValueError(f"fast round {fast_s} s, slowdown {slowdown}: need > 0 s and >= 1")
    return (slowdown - 1.0) * fast_s


def observed_ratio(per_silo: RoundSeconds, slow: str) -> float:
    """Median over rounds of the slow silo's round time / the fast silos' median that round."""
    ratios = []
    for number, slow_s in per_silo.get(slow, {}).items():
        fast = [r[number] for silo, r in per_silo.items() if silo != slow and number in r]
        if fast and statistics.median(fast) > 0:
            ratios.append(slow_s / statistics.median(fast))
    if not ratios:
        raise ValueError(f"silo {slow} shares no round with a fast silo")
    return statistics.median(ratios)
