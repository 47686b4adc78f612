"""Stopping the service while silos long-poll: each poll is answered (204, no work) as the
shutdown begins, instead of holding uvicorn's graceful shutdown for its whole grace period
and then being cut off with a 500 and a traceback in the log (`aggregation.service.server`).

Real processes on 127.0.0.1: `fedsilo aggregator serve` and a silo's signed long-poll."""

from __future__ import annotations

import re
import threading
from pathlib import Path
from typing import Any

import httpx
from support.fault_helpers import wait_until
from support.live_service import coordinator, enrolled_silo, free_port

from flows.processes import start_service

FED = "shutdownfed"


def _waiting_polls(url: str, token: str) -> float:
    text = httpx.get(f"{url}/metrics", headers={"Authorization": f"Bearer {token}"}).text
    found = re.search(r"^fedsilo_long_polls_waiting (\S+)$", text, re.M)
    return float(found.group(1)) if found else 0.0


def test_a_long_poll_is_answered_when_the_service_stops(tmp_path: Path) -> None:
    port = free_port()
    service = start_service(tmp_path / "svc", port)
    url = f"http://127.0.0.1:{port}"
    token = (tmp_path / "svc" / "admin.token").read_text().strip()
    outcome: dict[str, Any] = {}
    try:
        coord = coordinator(url, token)
        coord.create_federation(FED)
        silo = enrolled_silo(url, coord, FED, "alpha")

        def poll() -> None:
            try:
                outcome["task"] = silo.next_task(wait_s=30)  # the service's longest wait
            except Exception as exc:  # noqa: BLE001 - the test reports it
                outcome["error"] = exc

        poller = threading.Thread(target=poll, daemon=True)
        poller.start()
        wait_until(lambda: _waiting_polls(url, token) >= 1, 120, "the silo's poll to wait")
        service.stop(timeout_s=120)  # SIGINT, as an operator's Ctrl-C or systemd's stop
        poller.join(timeout=120)
    finally:
        service.stop()
    assert not poller.is_alive()
    assert outcome == {"task": None}, outcome  # a 204: no work yet, ask again
    assert service.popen.returncode in (0, 130)  # it exited on the signal, was not killed
    log = service.log_path.read_text()
    assert " 500 " not in log and "Exception in ASGI application" not in log, log[-3000:]
    assert "timeout graceful shutdown exceeded" not in log
