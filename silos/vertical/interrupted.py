"""Vertical runs an agent was serving when it stopped: end them at its next start.

A party's part in a vertical run lives in its agent's memory (its X25519 key for the run,
its PSI secret, its Paillier keys or the gradients it holds). An agent killed mid-run cannot
rejoin: the service no longer offers the run (it gave its key), and its peers would wait on
their inbox until the coordinator's timeout (an hour by default). So while the agent serves
a run it keeps a marker in WORKSPACE/vertical/.serving/RUN; at start, before any new work,
it reports every marked run that is still running as failed, naming itself, and its peers
stop at their next poll. Kept light (no numpy, no Paillier): every agent start reads it.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from schemas.url_path import seg
from schemas.vertical import RunFailed, VerticalEvent, VerticalRunOut
from silos.client import SiloClient
from silos.client_errors import ClientError, ServiceRejected

log = logging.getLogger("fedsilo.silo")


def _markers(workspace: Path) -> Path:
    return workspace / "vertical" / ".serving"


@contextmanager
def serving(workspace: Path, run_id: str) -> Iterator[None]:
    """Mark `run_id` as being served for as long as the block runs (a kill leaves it)."""
    folder = _markers(workspace)
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    marker = folder / run_id
    marker.touch()
    try:
        yield
    finally:
        marker.unlink(missing_ok=True)


def end_interrupted(client: SiloClient, workspace: Path) -> list[str]:
    """Report as failed every vertical run this silo's agent was serving when it stopped and
    that is still running; returns their ids. A run the service could not be asked about
    (unreachable) keeps its marker, for the next start."""
    folder = _markers(workspace)
    ended: list[str] = []
    for marker in sorted(folder.glob("*")) if folder.is_dir() else []:
        run_id, base = marker.name, f"/v1/silo/vertical/{seg(marker.name)}"
        try:
            run = VerticalRunOut.model_validate_json(client.request("GET", base).content)
            if run.status == "running":
                reason = (
                    f"silo {client.silo!r}'s agent restarted during the run: its keys and "
                    "state for it are gone"
                )
                event = VerticalEvent.model_validate({"event": RunFailed(reason=reason)})
                client.request(
                    "POST",
                    base + "/events",
                    body=event.model_dump_json().encode(),
                    content_type="application/json",
                )
                ended.append(run_id)
                log.warning("silo %s: vertical run %s ended: %s", client.silo, run_id, reason)
        except ServiceRejected as exc:  # unknown here, or ended meanwhile: nothing to end
            log.info("silo %s: vertical run %s needs no ending: %s", client.silo, run_id, exc)
        except ClientError as exc:  # the service did not answer: ask again at the next start
            log.warning(
                "silo %s: could not end vertical run %s, interrupted by a restart: %s",
                client.silo,
                run_id,
                exc,
            )
            continue
        marker.unlink(missing_ok=True)
    return ended
