"""The service killed mid-round (tests/integration): shared by the SQLite cases, which use their
module's warm federation, and the PostgreSQL case, which needs a federation on its own database
and lives in a file of its own so that pytest-xdist can run it beside the others."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import create_engine, text

from schemas.specs import StrategySpec
from support.fault_helpers import (
    Federation,
    assert_every_model_is_its_round_mean,
    join,
    train_in_thread,
)

# The kill lands in round 3; round 4 is then trained wholly by the restarted service, so four
# rounds show both a round that straddles the restart and a clean one after it (six, before,
# added only more clean rounds).
ROUNDS = 4


def kill_service_mid_round(fed: Federation, out: Path, secure: bool) -> None:
    """Kill -9 the service while round 3 is open, restart it, and check that the run completes
    with every silo counted exactly once in every round and each model its round's mean."""
    thread, outcome = train_in_thread(
        fed.urls, fed.token, out, ROUNDS, strategy=StrategySpec(name="fedavg"), secure=secure
    )

    def in_round_3() -> bool:
        assert thread.is_alive(), f"the run ended before round 3: {outcome}"
        runs = fed.coord.list_runs("heart", limit=1)
        return bool(
            runs and runs[0].status == "running" and (runs[0].latest_model_version or 0) >= 2
        )

    fed.wait(in_round_3, "the run to reach round 3")
    fed.services[0].kill9()  # mid-round: round 3 is open and silos are training or submitting
    fed.restart_service()
    result = join(thread, outcome, fed)
    assert all(len(r["contributors"]) == 4 for r in result["rounds"])
    if secure:  # individual updates are masked: check each round counted each silo once
        engine = create_engine(fed.db_url)
        try:
            with engine.connect() as conn:
                rows = conn.execute(
                    text(
                        "SELECT round, count(*) FROM contributions WHERE run_id = :r "
                        "AND kind = 'update' GROUP BY round"
                    ),
                    {"r": result["run_id"]},
                ).all()
        finally:
            engine.dispose()
        assert dict(rows) == {r: 4 for r in range(1, ROUNDS + 1)}
        return
    assert_every_model_is_its_round_mean(fed.db_url, result["run_id"], ROUNDS)
