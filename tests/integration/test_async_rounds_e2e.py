"""Asynchronous (FedBuff) rounds end to end: the service, four silo agents and the coordinator's
Prefect flow as real processes on 127.0.0.1, with Switzerland's training slowed by a real wait
(``FEDSILO_BENCH_TRAIN_DELAY_S``). Buffers of K=3 close without it; its late updates join a
later buffer with their staleness and weight, and the ledger says so."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from support.fault_helpers import HOSPITALS, start_federation, train

from schemas.specs import AsyncSpec
from silos.bench_delay import ENV

pytestmark = [pytest.mark.integration, pytest.mark.timeout(1800)]
SLOW = "switzerland"
BUFFERS = 20
# Each agent round also pays seconds of Prefect tasks and validation (more on a loaded machine):
# 3 s made the slow silo only ~1.4x slower than the others in CI, and it joined 6 of 10 buffers.
# 20 s keeps it several times slower under load. Its first update came 42 s after it joined in
# a CI run on three xdist workers, when the fast three had already closed ten buffers (it was in
# none): twenty buffers (~80 s of the fast three) leave it room to arrive, stale, at least once.
SLOW_DELAY_S = "20.0"
# and the fast three no faster than 1.5 s a buffer: on a quick machine twenty buffers of theirs
# then still take longer than the slow silo's first update
FAST_DELAY_S = "1.5"


def test_async_buffers_go_on_without_a_slow_silo_and_apply_it_stale(
    tmp_path: Path, prefect_api_url: str
) -> None:
    delays = {name: {ENV: SLOW_DELAY_S if name == SLOW else FAST_DELAY_S} for name in HOSPITALS}
    fed = start_federation(tmp_path, prefect_api_url, agent_env=delays)
    try:
        result = train(
            fed.urls,
            fed.token,
            tmp_path / "models",
            rounds=BUFFERS,
            secure=False,
            asynchronous=AsyncSpec(buffer_size=3, max_staleness=BUFFERS),
        )
        rounds = result["rounds"]
        assert [r["kind"] for r in rounds] == ["train"] * BUFFERS + ["evaluate"]
        assert sorted(rounds[-1]["contributors"]) == sorted(HOSPITALS)  # all four evaluate
        assert rounds[-1]["accuracy"] > 0.7, rounds[-1]

        entries = [
            json.loads(e.payload)
            for e in fed.coord.ledger(result["run_id"])
            if e.kind == "aggregate"
        ]
        assert len(entries) == BUFFERS
        assert all(e["asynchronous"]["buffer_size"] == 3 for e in entries)
        # every buffer closed at its third usable update (none waited for the deadline)
        assert all(len(e["contributors"]) == 3 for e in entries), [
            e["contributors"] for e in entries
        ]
        slow = [c for e in entries for c in e["contributors"] if c["silo"] == SLOW]
        fast = [c for e in entries for c in e["contributors"] if c["silo"] != SLOW]
        assert len(slow) < BUFFERS // 2  # a 10x slower silo is in few buffers ...
        assert any(c["staleness"] >= 1 for c in slow), slow  # ... and arrives late
        for c in slow + fast:
            assert c["weight"] == pytest.approx(1 / math.sqrt(1 + c["staleness"]))
            assert c["base_version"] == c["base_round"] - 1  # no statistics round here
    finally:
        fed.stop()
