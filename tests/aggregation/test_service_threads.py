"""The service runs its sync handlers and long-poll checks on `worker_threads` threads, not
anyio's default 40 (bench/scale.py: fewer runnable threads cost less CPU at 128 silos)."""

from __future__ import annotations

import threading
from pathlib import Path

import anyio.to_thread
import pytest
from anyio.to_thread import current_default_thread_limiter
from fastapi.testclient import TestClient

from aggregation.service.deps import FactoryDep, HubDep, RecorderDep, SettingsDep
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


def test_the_state_accessors_run_on_the_event_loop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A sync dependency costs a hop to a worker thread and back per request (FastAPI runs it
    there); the service's accessors of its settings, sessions, recorder and hub are async, so
    a route that only reads them runs no thread at all."""
    hops: list[object] = []
    run_sync = anyio.to_thread.run_sync

    async def counted(func, *args, **kwargs):  # type: ignore[no-untyped-def]
        hops.append(func)
        return await run_sync(func, *args, **kwargs)

    monkeypatch.setattr(anyio.to_thread, "run_sync", counted)
    app = create_app(ServiceSettings(workspace=tmp_path))

    @app.get("/test-accessors")
    async def accessors(
        settings: SettingsDep, factory: FactoryDep, recorder: RecorderDep, hub: HubDep
    ) -> bool:
        return all(x is not None for x in (settings, factory, recorder, hub))

    with TestClient(app) as client:
        hops.clear()
        assert client.get("/test-accessors").json() is True
    assert hops == []
