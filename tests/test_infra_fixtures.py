"""The shared fixtures in tests/conftest.py reach real servers and keep tests apart."""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path

import httpx
import psycopg
import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

DIALECT_OF_PARAM = {"sqlite": "sqlite", "postgres": "postgresql"}


def _dsn(url: str) -> str:
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def _public_tables(url: str) -> list[str]:
    with psycopg.connect(_dsn(url)) as conn:
        rows = conn.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'"
        ).fetchall()
    return [row[0] for row in rows]


def _databases(url: str) -> set[str]:
    with psycopg.connect(_dsn(url)) as conn:
        return {row[0] for row in conn.execute("SELECT datname FROM pg_database").fetchall()}


def test_db_url_answers_select_one_on_its_backend(
    db_url: str, request: pytest.FixtureRequest
) -> None:
    engine = create_engine(db_url)
    try:
        with engine.connect() as conn:
            assert conn.execute(text("SELECT 1")).scalar_one() == 1
        assert engine.dialect.name == DIALECT_OF_PARAM[request.node.callspec.params["db_url"]]
    finally:
        engine.dispose()


def test_sqlite_url_lives_in_the_tests_own_folder(sqlite_url: str, tmp_path: Path) -> None:
    engine = create_engine(sqlite_url)
    try:
        with engine.begin() as conn:
            conn.execute(text("CREATE TABLE probe (x INTEGER)"))
    finally:
        engine.dispose()
    assert (tmp_path / "service.db").is_file()


@pytest.mark.postgres
@pytest.mark.parametrize("attempt", [1, 2])
def test_fresh_pg_database_starts_empty_each_time(
    fresh_pg_url: str, pg_url: str, attempt: int
) -> None:
    # Both attempts leave a table behind: if databases were reused, the second would see it.
    assert make_url(fresh_pg_url).database != make_url(pg_url).database
    assert _public_tables(fresh_pg_url) == []
    with psycopg.connect(_dsn(fresh_pg_url)) as conn:
        conn.execute("CREATE TABLE leftover (attempt INTEGER)")
    assert _public_tables(fresh_pg_url) == ["leftover"]
    assert "leftover" not in _public_tables(pg_url)


@pytest.mark.postgres
def test_pg_database_factory_gives_distinct_databases_and_drops_them(
    pg_database_factory: Callable[[], AbstractContextManager[str]], pg_url: str
) -> None:
    with pg_database_factory() as first, pg_database_factory() as second:
        names = {make_url(first).database, make_url(second).database}
        assert len(names) == 2
        assert names <= _databases(pg_url)
        # An open connection must not stop the drop (DROP DATABASE ... WITH (FORCE)).
        lingering = psycopg.connect(_dsn(first))
    assert not names & _databases(pg_url)
    try:
        with pytest.raises(psycopg.OperationalError):
            lingering.execute("SELECT 1")
    finally:
        lingering.close()


def test_free_port_factory_gives_bindable_loopback_ports(
    free_port_factory: Callable[[], int],
) -> None:
    port = free_port_factory()
    assert 1024 <= port <= 65535
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))


@pytest.mark.integration
def test_prefect_api_url_answers_health_and_is_what_prefect_uses(prefect_api_url: str) -> None:
    from prefect.settings import PREFECT_API_URL

    response = httpx.get(f"{prefect_api_url}/health", timeout=10)
    assert response.status_code == 200
    assert response.json() is True
    assert os.environ["PREFECT_API_URL"].rstrip("/") == prefect_api_url
    assert PREFECT_API_URL.value().rstrip("/") == prefect_api_url
