"""What the coordinator says while it waits: silos' readiness before round 1, a line per round.

The service knows which silos a round's current stage still waits for (`RoundOut.awaited`);
per-silo update state cannot tell, since every silo stays "waiting" until the masked-update
stage of secure aggregation. Run interactively (a terminal), the line is a live rich status
that redraws in place; otherwise (logs, CI, `fedsilo demo` piped) a plain line is printed each
time the stage, the answers or the awaited silos change, never on every poll.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from prefect import get_run_logger
from rich.console import Console
from rich.live import Live
from rich.markup import escape
from rich.text import Text

from flows.exceptions import RunCancelled, RunFailed
from flows.service_client import CoordinatorClient
from schemas.wire import RoundOut, SiloOut

READY_POLL_S = 2.0


def stage_of(out: RoundOut) -> str:
    """The round's current stage: a secure stage's name, or `collect` for plain rounds."""
    return out.stage or out.secagg_stage or "collect"


def declined(out: RoundOut) -> dict[str, str]:
    """Declined silos with `cause: reason`, as the round table and the artifact show them."""
    return {
        s.silo: f"{s.cause or 'declined'}: {s.reason or 'no reason given'}"
        for s in out.silos
        if s.state == "declined"
    }


def left_out(out: RoundOut, state: str) -> dict[str, str]:
    """Silos out of the round in `state` (refused, sat_out) with why: a silo that declined the
    whole run (its policy, say) is refused, and a failed round's own reason may not say so."""
    return {
        s.silo: f"{s.cause}: {s.reason}" if s.cause else s.reason or "no reason given"
        for s in out.silos
        if s.state == state
    }


def answered(out: RoundOut) -> list[str]:
    """Silos that answered the current stage: in the round, not awaited, not out of it."""
    away = set(out.awaited)
    return [s.silo for s in out.silos if s.silo not in away and s.state not in _OUT]


_OUT = ("declined", "refused", "sat_out")


def progress_line(out: RoundOut, remaining_s: float | None = None) -> str:
    """One line: round, stage, who answered, who is awaited, who declined, refused or sat out
    (and why), time left."""
    done, away = answered(out), out.awaited
    parts = [
        f"round {out.round} {out.kind}",
        f"stage {stage_of(out)}",
        f"answered {len(done)}/{len(out.silos)}" + (f": {', '.join(done)}" if done else ""),
    ]
    if away:
        parts.append(f"awaited: {', '.join(away)}")
    for label, why in (
        ("declined", declined(out)),
        ("refused", left_out(out, "refused")),
        ("sat out", left_out(out, "sat_out")),
    ):
        if why:
            parts.append(f"{label}: " + "; ".join(f"{k} ({v})" for k, v in why.items()))
    if out.status != "open":
        parts.append(out.status)
    elif remaining_s is not None:
        parts.append(f"{max(0.0, remaining_s):.0f} s left")
    return " · ".join(parts)


class RoundView:
    """The per-round progress line: live on a terminal, one plain line per change otherwise.

    `console=None` shows nothing (a scheduled flow run on a worker: its logs say enough).
    """

    def __init__(self, console: Console | None) -> None:
        self.console = console
        self._live: Live | None = None
        self._last = ""

    def update(self, out: RoundOut, remaining_s: float | None = None) -> None:
        if self.console is None:
            return
        line = progress_line(out, remaining_s)
        if self.console.is_terminal:
            if self._live is None:
                self._live = Live(console=self.console, transient=True, auto_refresh=False)
                self._live.start()
            self._live.update(Text(line), refresh=True)
            self._last = line
            return
        key = progress_line(out)  # without the seconds left, which change on every poll
        if key != self._last:  # plain output: only changes, without the ticking seconds
            self.console.print(escape(line), soft_wrap=True)
            self._last = key

    def note(self, message: str) -> None:
        """A one-off plain line (readiness), printed once per distinct message."""
        if self.console is not None and message != self._last:
            self.console.print(escape(message), soft_wrap=True)
            self._last = message

    def done(self) -> None:
        """End the round's live line, leaving its last state printed once."""
        if self._live is not None:
            self._live.stop()
            self._live = None
            if self.console is not None:
                self.console.print(escape(self._last), soft_wrap=True)
        self._last = ""


def check_cancelled(client: CoordinatorClient, run_id: str) -> None:
    """Raise `RunCancelled` when someone cancelled the run at the service."""
    run = client.get_run(run_id)
    if run.status == "cancelled":
        raise RunCancelled(f"run {run_id} was cancelled: {run.reason or 'no reason given'}")


def is_ready(silo: SiloOut | None) -> bool:
    """A silo counts as ready when its agent reported ready and is still online (a ready
    report from an agent that has since stopped does not count)."""
    return silo is not None and silo.ready_at is not None and silo.online


def wait_ready(
    client: CoordinatorClient,
    run_id: str,
    federation: str,
    participants: list[str],
    min_silos: int,
    timeout_s: float,
    view: RoundView,
    clock: Callable[[], float] = time.monotonic,
) -> list[str]:
    """Wait until every participant is ready, so that round 1's deadline does not pay for a
    silo's cold start (loading data, Great Expectations' first validation).

    Returns the ready silos. At `timeout_s` the run goes on with the ready ones if there are at
    least `min_silos`, else `RunFailed` names the silos not ready. `timeout_s <= 0` skips the
    wait (agents older than the ready report never send one).
    """
    if timeout_s <= 0:
        return list(participants)
    logger = get_run_logger()
    deadline = clock() + timeout_s
    while True:
        check_cancelled(client, run_id)
        known = {s.name: s for s in client.silos(federation)}
        missing = [n for n in participants if not is_ready(known.get(n))]
        ready = [n for n in participants if n not in missing]
        if not missing:
            view.note(f"all {len(ready)} silos ready: {', '.join(ready)}")
            logger.info("all %d silos ready: %s", len(ready), ", ".join(ready))
            return ready
        remaining = deadline - clock()
        view.note(f"{len(ready)}/{len(participants)} silos ready; not ready: {', '.join(missing)}")
        if remaining <= 0:
            break
        time.sleep(min(READY_POLL_S, remaining))
    if len(ready) < min_silos:
        raise RunFailed(
            f"only {len(ready)} of {len(participants)} silos ready after {timeout_s:.0f} s "
            f"(the run needs {min_silos}); not ready: {', '.join(missing)}. Check that their "
            "agents run (`fedsilo silo start`) and reach the service, or raise --ready-timeout-s"
        )
    logger.warning(
        "%d silos not ready after %.0f s, going on without waiting for them: %s",
        len(missing),
        timeout_s,
        ", ".join(missing),
    )
    return ready
