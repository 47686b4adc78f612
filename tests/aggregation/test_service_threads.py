"""The service runs its sync handlers and long-poll checks on `worker_threads` threads, not
anyio's default 40 (bench/scale.py: fewer runnable threads cost less CPU at 128 silos)."""

from __future__ import annotations

import threading
from pathlib import Path

from anyio.to_thread import current_default_thread_limiter
from fastapi.testclient import TestClient

from aggregation.service.main import create_app
from aggregation.service.settings import ServiceSettings


def _tokens(client: TestClient) -> float:
    assert client.portal is not None
    return client.portal.call(lambda: current_default_thread_limiter().total_tokens)


def test_the_service_runs_handlers_on_its_configured_threads(tmp_path: Path) -> None:
    assert ServiceSettings(workspace=tmp_path).worker_threads == 8
    app = create_app(ServiceSettings(workspace=tmp_path, worker_threads=3))
    seen: set[int] = set()

    @app.get("/test-thread")
    def which() -> int:  # a sync handler: it runs on the pool
        seen.add(threading.get_ident())
        return threading.get_ident()

    with TestClient(app) as client:
        assert _tokens(client) == 3
        for _ in range(12):
            assert client.get("/test-thread").status_code == 200
    assert 1 <= len(seen) <= 3
