"""Fixtures of the aggregation tests: one live service per test module and backend."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, nullcontext

import pytest
from sqlalchemy import Engine
from support.api_federation import MAX_BODY_BYTES
from support.live_service import service_in_thread

from aggregation.service.db import make_engine, make_sessionmaker, transaction
from aggregation.service.tables import Base, Federation


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


@pytest.fixture
def fed_engine(db_url: str) -> Iterator[Engine]:
    """An engine on `db_url` (each backend in turn) whose database has every table of the
    service and one federation, "f": for tests of queries, without a service."""
    engine = make_engine(db_url)
    Base.metadata.create_all(engine)
    with transaction(make_sessionmaker(engine)) as s:
        s.add(Federation(name="f"))
    yield engine
    engine.dispose()
