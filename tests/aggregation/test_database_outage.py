"""The service and its database when the database is away, hung, read-only or raced.

- A request while PostgreSQL is unreachable answers 503 with Retry-After (one rate-limited
  WARNING line in the log, no traceback), and answers again once it is back; a pooled
  connection broken while the hub was idle is replaced, not handed to a request.
- A database host that accepts the connection and never answers fails the start within the
  connect timeout (`aggregator serve`: exit 5, naming host and port).
- A read-only database fails the start (exit 2), not every later write.
- Concurrent starts on an empty database migrate one after the other.
- A database whose ledger holds entries never gets a new service signing key.
"""

from __future__ import annotations

import inspect as pyinspect
import logging
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path

import httpx
import psycopg
import pytest
from sqlalchemy import Engine, create_engine, make_url, text
from sqlalchemy.exc import OperationalError, ProgrammingError
from support.live_service import coordinator, enrolled_silo, free_port, service_in_thread

from aggregation.service import db, migrate
from aggregation.service.db import DatabaseNotWritable, make_engine
from aggregation.service.keys import SigningKeyError
from aggregation.service.main import create_app
from aggregation.service.settings import ServiceSettings
from aggregation.service.wire import database_unavailable
from flows.cli.errors import UNREACHABLE, USAGE, describe
from flows.processes import base_env
from schemas.wire import WIRE_HEADER, WIRE_VERSION

REPO = Path(__file__).resolve().parents[2]
ADMIN = {"Authorization": "Bearer test-admin-token", WIRE_HEADER: str(WIRE_VERSION)}


class Relay:
    """A TCP relay in front of PostgreSQL: stopping it cuts the service off from its database
    (refused connections, pooled ones broken) the way a stopped server does."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target, self.port = target, free_port()
        self.server: socket.socket | None = None
        self.open: list[socket.socket] = []

    def start(self) -> None:
        self.server = socket.create_server(("127.0.0.1", self.port))
        threading.Thread(target=self._accept, args=(self.server,), daemon=True).start()

    def stop(self) -> None:
        if self.server is None:
            return
        self.server.shutdown(socket.SHUT_RDWR)
        self.server.close()
        self.server = None
        for conn in self.open:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            conn.close()
        self.open.clear()

    def _accept(self, server: socket.socket) -> None:
        while True:
            try:
                client, _ = server.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.target)
            self.open += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass


def _via(url: str, relay: Relay) -> str:
    return make_url(url).set(host="127.0.0.1", port=relay.port).render_as_string(False)


def _wait_ready(url: str, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if httpx.get(url + "/readyz", timeout=30).status_code == 200:
            return
    raise AssertionError("the service did not become ready again")


@pytest.mark.postgres
def test_requests_answer_503_with_retry_after_while_postgres_is_away(
    fresh_pg_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    relay = Relay((make_url(fresh_pg_url).host or "", make_url(fresh_pg_url).port or 5432))
    relay.start()
    try:
        with service_in_thread(tmp_path / "svc", _via(fresh_pg_url, relay)) as url:
            assert httpx.get(url + "/v1/federations", headers=ADMIN).status_code == 200
            caplog.clear()
            caplog.set_level(logging.DEBUG)
            relay.stop()
            for _ in range(8):  # broken pooled connections first, then refused new ones
                down = httpx.get(url + "/v1/federations", headers=ADMIN, timeout=30)
                assert down.status_code == 503, down.text
                assert down.headers["Retry-After"].isdigit()
                assert "database is unavailable" in down.json()["detail"]
                assert str(make_url(fresh_pg_url).password) not in down.text
            assert httpx.get(url + "/healthz").status_code == 200
            warned = [r for r in caplog.records if r.name == "fedsilo.service.database"]
            assert len(warned) == 1 and warned[0].levelno == logging.WARNING  # rate-limited
            assert not [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]
            relay.start()
            _wait_ready(url)
            assert httpx.get(url + "/v1/federations", headers=ADMIN).status_code == 200
    finally:
        relay.stop()


@pytest.mark.postgres
def test_a_connection_broken_while_idle_is_replaced_not_handed_to_a_request(
    fresh_pg_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(db, "IDLE_PING_S", 0.0)  # every checkout counts as after an idle spell
    relay = Relay((make_url(fresh_pg_url).host or "", make_url(fresh_pg_url).port or 5432))
    relay.start()
    try:
        with service_in_thread(tmp_path / "svc", _via(fresh_pg_url, relay)) as url:
            assert httpx.get(url + "/v1/federations", headers=ADMIN).status_code == 200
            relay.stop()  # the pooled connections break; nothing asks meanwhile
            relay.start()
            again = httpx.get(url + "/v1/federations", headers=ADMIN, timeout=30)
            assert again.status_code == 200, again.text
    finally:
        relay.stop()


class FakeDriverError(Exception):
    def __init__(self, message: str, sqlstate: str | None) -> None:
        super().__init__(message)
        self.sqlstate = sqlstate


@pytest.mark.parametrize(
    ("message", "sqlstate", "unavailable"),
    [
        ("FATAL:  sorry, too many clients already", "53300", True),
        ("terminating connection due to administrator command", "57P01", True),
        ("server closed the connection unexpectedly", "08006", True),
        ("permission denied for table runs", "42501", True),
        ("ledger is append-only: UPDATE on ledger_entries refused", "42501", False),
        ('syntax error at or near "SELEC"', "42601", False),
        ('duplicate key value violates unique constraint "x"', "23505", False),
    ],
)
def test_which_database_errors_are_503(message: str, sqlstate: str, unavailable: bool) -> None:
    error = ProgrammingError("SELECT 1", {}, FakeDriverError(message, sqlstate))
    assert (database_unavailable(error) is not None) is unavailable


def test_a_connect_timeout_is_503() -> None:
    timeout = psycopg.errors.ConnectionTimeout("connection timeout expired")
    assert database_unavailable(OperationalError(None, None, timeout)) is not None


def test_sqlite_busy_is_503_and_a_missing_table_is_not() -> None:
    busy = OperationalError("SELECT 1", {}, sqlite3.OperationalError("database is locked"))
    missing = OperationalError("SELECT 1", {}, sqlite3.OperationalError("no such table: runs"))
    assert database_unavailable(busy) is not None and database_unavailable(missing) is None


def _silent_listener() -> socket.socket:
    """A socket that accepts TCP connections (the kernel's backlog) and never answers."""
    return socket.create_server(("127.0.0.1", 0), backlog=16)


def test_a_silent_database_host_fails_the_start_within_the_connect_timeout(
    tmp_path: Path,
) -> None:
    with _silent_listener() as silent:
        port = silent.getsockname()[1]
        url = f"postgresql+psycopg://fedsilo:s3cret@127.0.0.1:{port}/fedsilo"
        settings = ServiceSettings(
            workspace=tmp_path / "svc", database_url=url, database_connect_timeout_s=2
        )
        started = time.monotonic()
        with pytest.raises(OperationalError) as raised:
            create_app(settings)
        assert time.monotonic() - started < 20
        code, message = describe(raised.value)
        assert code == UNREACHABLE and "timeout expired" in message
        assert "s3cret" not in message


def test_serve_against_a_silent_database_host_exits_5_naming_it(tmp_path: Path) -> None:
    with _silent_listener() as silent:
        port = silent.getsockname()[1]
        url = f"postgresql+psycopg://fedsilo:s3cret@127.0.0.1:{port}/fedsilo"
        done = subprocess.run(
            [sys.executable, "-m", "flows.cli", "aggregator", "serve", "--port",
             str(free_port()), "--workspace", str(tmp_path / "svc"), "--database-url", url],
            capture_output=True, text=True, timeout=90, cwd=REPO, check=False,
            env=base_env(FEDSILO_SERVICE_DATABASE_CONNECT_TIMEOUT_S="2"),
        )  # fmt: skip
    assert done.returncode == 5, done.stdout + done.stderr
    assert f"database unreachable at 127.0.0.1:{port}" in done.stderr
    assert "s3cret" not in done.stdout + done.stderr


@pytest.mark.parametrize(
    ("said", "code", "named"),
    [
        ('connection failed: connection to server at "10.0.0.5", port 5432 failed: '
         'FATAL:  password authentication failed for user "hub"', USAGE,
         'authentication failed for user "hub" at 10.0.0.5:5432'),
        ('connection failed: connection to server at "127.0.0.1", port 5433 failed: '
         'FATAL:  database "nope" does not exist', USAGE, 'database "nope" does not exist'),
        ('connection failed: connection to server at "127.0.0.1", port 5999 failed: '
         "Connection refused", UNREACHABLE, "database unreachable at 127.0.0.1:5999"),
        ("connection failed: FATAL:  sorry, too many clients already", UNREACHABLE,
         "no free connection"),
    ],
)  # fmt: skip
def test_start_up_database_errors_are_named(said: str, code: int, named: str) -> None:
    got_code, message = describe(OperationalError(None, None, FakeDriverError(said, None)))
    assert got_code == code and named in message


def test_healthz_is_answered_on_the_event_loop(tmp_path: Path) -> None:
    app = create_app(ServiceSettings(workspace=tmp_path / "svc", admin_token="test-admin-token"))
    (route,) = [r for r in app.routes if getattr(r, "path", "") == "/healthz"]
    # a sync handler would wait for a worker thread, all of which a hung database may hold
    assert pyinspect.iscoroutinefunction(route.endpoint)  # type: ignore[attr-defined]
    app.state.engine.dispose()


@pytest.mark.postgres
def test_a_read_only_database_is_refused_at_start(fresh_pg_url: str, tmp_path: Path) -> None:
    create_app(ServiceSettings(workspace=tmp_path / "a", database_url=fresh_pg_url))
    name = make_url(fresh_pg_url).database
    owner = create_engine(fresh_pg_url, isolation_level="AUTOCOMMIT")
    with owner.connect() as conn:
        conn.execute(text(f'ALTER DATABASE "{name}" SET default_transaction_read_only = on'))
    owner.dispose()
    with pytest.raises(DatabaseNotWritable, match="read-only transaction") as refused:
        create_app(ServiceSettings(workspace=tmp_path / "b", database_url=fresh_pg_url))
    assert describe(refused.value)[0] == USAGE


def _upgrade_at_once(url: str, processes: int = 3) -> list[Exception]:
    """`migrate.upgrade` from `processes` engines released together; what each raised."""
    engines = [make_engine(url) for _ in range(processes)]
    gate, failures = threading.Barrier(processes), []

    def upgrade(engine: Engine) -> None:
        gate.wait()
        try:
            migrate.upgrade(engine)
        except Exception as exc:  # reported by the caller
            failures.append(exc)

    threads = [threading.Thread(target=upgrade, args=(e,)) for e in engines]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    for e in engines:
        e.dispose()
    return failures


@pytest.mark.postgres
def test_concurrent_migrations_of_an_empty_database_take_turns(
    pg_database_factory: Callable[[], AbstractContextManager[str]],
) -> None:
    for _ in range(2):  # the race lost 2 trials in 3 before the lock
        with pg_database_factory() as url:
            assert _upgrade_at_once(url) == []


def test_serve_refuses_to_make_a_new_signing_key_for_a_ledger_with_entries(
    tmp_path: Path,
) -> None:
    workspace = tmp_path / "svc"
    with service_in_thread(workspace, "") as url:
        coord = coordinator(url)
        coord.create_federation("heart")
        enrolled_silo(url, coord, "heart", "cleveland")
    key = workspace / "keys" / "service_ed25519.pem"
    key.unlink()
    settings = ServiceSettings(workspace=workspace, admin_token="test-admin-token")
    with pytest.raises(SigningKeyError, match="missing") as refused:
        create_app(settings)
    assert not key.exists()
    assert describe(refused.value)[0] == USAGE
