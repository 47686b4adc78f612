"""The coordinator's per-round progress line: stage, who answered, who is awaited, who declined;
plain lines (one per change, none per poll) when the output is not a terminal."""

from __future__ import annotations

import io
from datetime import UTC, datetime, timedelta

from rich.console import Console

from flows.round_progress import RoundView, answered, progress_line
from schemas.wire import RoundOut, SiloRoundState

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def _round(awaited: list[str], stage: str | None = "share", **states: str) -> RoundOut:
    silos = [
        SiloRoundState(
            silo=name,
            state=state,  # type: ignore[arg-type]
            cause="training" if state == "declined" else None,
            reason="only one class in the training split" if state == "declined" else None,
        )
        for name, state in states.items()
    ]
    return RoundOut(
        run_id="r1",
        round=3,
        kind="train",
        status="open",
        opened_at=NOW,
        deadline_at=NOW + timedelta(seconds=60),
        complete=False,
        silos=silos,
        awaited=awaited,
        stage=stage,
    )


def test_line_names_answered_awaited_and_declined_silos() -> None:
    # in a secure stage every silo's update state is "waiting": only `awaited` tells who is late
    out = _round(["d"], a="waiting", b="waiting", c="waiting", d="waiting", e="declined")
    assert answered(out) == ["a", "b", "c"]
    line = progress_line(out, 12.4)
    assert line.startswith("round 3 train · stage share · answered 3/5: a, b, c · awaited: d")
    assert "declined: e (training: only one class in the training split)" in line
    assert line.endswith("12 s left")


def test_line_says_why_silos_refused_the_run_or_sat_the_round_out() -> None:
    # every silo declined the run by policy: the failed round's own reason ("too few silos
    # advertised session keys") does not say why, the line must
    policy = "silo a policy allows modes ['bagging', 'cyclic']; the run asks for 'secure-hist'"
    silos = [
        SiloRoundState(silo="a", state="refused", cause="policy", reason=policy),
        SiloRoundState(silo="b", state="refused", reason="declined the run in round 1: policy"),
        SiloRoundState(silo="c", state="sat_out", reason="chol: 123 of 123 rows out of range"),
    ]
    out = _round([], stage=None).model_copy(update={"silos": silos, "status": "failed"})
    line = progress_line(out)
    assert "answered 0/3" in line
    assert f"refused: a (policy: {policy}); b (declined the run in round 1: policy)" in line
    assert "sat out: c (chol: 123 of 123 rows out of range)" in line
    assert line.endswith(" · failed")


def test_plain_output_prints_each_change_once_with_markup_kept() -> None:
    buf = io.StringIO()
    view = RoundView(Console(file=buf, force_terminal=False, width=200))
    waiting = _round(["b", "c"], stage="[advertise]", a="waiting", b="waiting", c="waiting")
    for remaining in (50.0, 40.0, 30.0):  # polls without change: one line, not three
        view.update(waiting, remaining)
    view.update(_round(["c"], stage="[advertise]", a="waiting", b="waiting", c="waiting"), 20.0)
    view.done()
    lines = buf.getvalue().splitlines()
    assert len(lines) == 2, lines
    assert "awaited: b, c" in lines[0] and "50 s left" in lines[0]
    assert "stage [advertise]" in lines[1] and "awaited: c" in lines[1]


def test_no_console_prints_nothing() -> None:
    view = RoundView(None)
    view.update(_round(["a"], a="waiting"), 5.0)
    view.note("ready")
    view.done()  # nothing to show, nothing raised
