"""close_round takes the run's lock before the round's, the order every answer path takes them
in: the reverse let a deadline close racing a late answer deadlock on PostgreSQL (a 500)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from aggregation.service import closing


@pytest.mark.parametrize("status", ["open", "aggregated"])
def test_close_round_locks_the_run_before_the_round(
    monkeypatch: pytest.MonkeyPatch, status: str
) -> None:
    locked: list[str] = []

    def get_run(s: object, run_id: str, *, for_update: bool = False) -> object:
        locked.append(f"run for_update={for_update}")
        return SimpleNamespace(id=run_id)

    def get_round(s: object, run_id: str, number: int, *, for_update: bool = False) -> object:
        locked.append(f"round for_update={for_update}")
        return SimpleNamespace(status=status)

    class Stop(Exception):
        pass

    def spec_of(run: object) -> object:
        raise Stop  # both locks are taken by now; the rest is the engine's

    monkeypatch.setattr(closing, "get_run", get_run)
    monkeypatch.setattr(closing, "get_round", get_round)
    monkeypatch.setattr(closing, "spec_of", spec_of)
    try:
        closing.close_round(None, "r1", 1, hub=None)  # type: ignore[arg-type]
    except Stop:
        pass
    assert locked[:2] == ["run for_update=True", "round for_update=True"]
