"""`fedsilo runs show`'s round table: a closed round waits for nobody, so a silo without an
answer there is shown by what became of it (a closed asynchronous buffer says where the
silo's update went) or as having sent none, never "waiting"; an open round still waits."""

from __future__ import annotations

from datetime import UTC, datetime

from rich.console import Console

from flows.render import round_table
from schemas.wire import RoundOut, SiloRoundState


def _round(number: int, status: str, silos: list[SiloRoundState]) -> RoundOut:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    return RoundOut(
        run_id="run-1",
        round=number,
        kind="train",
        status=status,  # type: ignore[arg-type]
        opened_at=now,
        deadline_at=now,
        complete=False,
        silos=silos,
    )


def _text(rounds: list[RoundOut]) -> str:
    console = Console(width=400, record=True)
    console.print(round_table(rounds))
    return console.export_text()


def test_closed_rounds_show_no_silo_as_waiting() -> None:
    carried = "its update of round 1 went into buffer 3"
    text = _text(
        [
            _round(
                1,
                "aggregated",
                [
                    SiloRoundState(silo="cleveland", state="submitted"),
                    SiloRoundState(silo="hungary", state="waiting", reason=carried),
                    SiloRoundState(silo="bern", state="waiting"),  # a synchronous no-show
                ],
            ),
            _round(2, "failed", [SiloRoundState(silo="hungary", state="waiting")]),
            _round(3, "open", [SiloRoundState(silo="hungary", state="waiting")]),
        ]
    )
    rows = {line.split("│")[1].strip(): line for line in text.splitlines() if "│" in line}
    assert f"hungary: {carried}" in rows["1"] and "bern: no answer" in rows["1"]
    assert "hungary: no answer" in rows["2"]
    assert "waiting" not in rows["1"] + rows["2"]
    assert "hungary: waiting" in rows["3"]  # an open round does wait for it
    assert "refused / declined / absent" in text
