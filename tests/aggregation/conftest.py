"""Fixtures of the aggregation tests: one live service per test module and backend."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, nullcontext

import pytest
from support.api_federation import MAX_BODY_BYTES
from support.live_service import service_in_thread


@pytest.fixture(
    scope="module", params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
)
def api_service_url(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """Base URL of a service that the module's tests share, on each backend in turn (a SQLite
    file of its own, then a fresh PostgreSQL database): its start and migrations are paid once
    per module, not once per test. Tests keep apart by each using a federation of its own
    (`support.api_federation.new_federation`)."""
    workspace = tmp_path_factory.mktemp("svc")
    database: AbstractContextManager[str]
    if request.param == "sqlite":
        database = nullcontext(f"sqlite:///{workspace}/service.db")
    else:
        factory: Callable[[], AbstractContextManager[str]]
        factory = request.getfixturevalue("pg_database_factory")
        database = factory()
    with database as db_url:
        with service_in_thread(workspace, db_url, max_body_bytes=MAX_BODY_BYTES) as url:
            yield url
