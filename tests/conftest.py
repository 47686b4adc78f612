"""Fixtures shared by every fedsilo test: databases and a Prefect server, all on 127.0.0.1.

Backends
    ``sqlite_url`` (a file in the test's tmp_path), ``pg_url`` (the server that
    ``scripts/pg-test-server`` starts, from ``FEDSILO_TEST_PG_URL``), ``fresh_pg_url`` (a new
    empty database on that server, dropped afterwards) and ``db_url``, parametrized over both
    backends so that one contract test runs on SQLite and PostgreSQL. PostgreSQL cases carry the
    ``postgres`` mark: ``-m "not postgres"`` deselects them. Without ``FEDSILO_TEST_PG_URL`` they
    are skipped locally but fail under ``CI=true``: CI must never silently skip PostgreSQL.

Prefect
    ``prefect_api_url`` uses ``PREFECT_API_URL`` when set (``.ci/run`` starts a server), otherwise
    starts ``prefect server start`` on a free port for the session.

Load
    ``cpu_hog`` runs two busy processes beside one test; ``pytest --cpu-hog N`` (or
    ``FEDSILO_TEST_CPU_HOG=N``) runs the whole session beside N of them, to check that tests
    hold on a loaded machine. Under pytest-xdist the controller starts them, once.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, ExitStack, contextmanager
from pathlib import Path

import httpx
import psycopg
import pytest
from psycopg import sql
from sqlalchemy.engine import URL, make_url
from support import capture_guard, prewarmed
from support.cpu_hog import CpuHog
from support.cpu_hog import cpu_hog as start_cpu_hog
from support.schedule import longest_files_first, seconds_by_file

from flows.processes import Proc

# Set before any test imports Prefect: its settings are read once, at import.
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
os.environ["DO_NOT_TRACK"] = "1"
os.environ["GX_ANALYTICS_ENABLED"] = "false"
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")

# Prefect sets up its console log handler when first imported, bound to the sys.stderr of that
# moment. Imported here, that is pytest's capture, which lives as long as the session; imported
# first inside a test's CliRunner.invoke, it would be the runner's stream, closed when the test
# ends, and every later warning in the process would print a "Logging error" traceback into
# whatever the next test captures (test_cli_errors.py after test_cli_train.py, run alone).
import prefect  # noqa: E402, F401

PG_URL_ENV = "FEDSILO_TEST_PG_URL"
CPU_HOG_ENV = "FEDSILO_TEST_CPU_HOG"
SLOW_ENV = "FEDSILO_TEST_SLOW"
PREFECT_START_TIMEOUT_S = 120.0


def free_port() -> int:
    """Return a TCP port that is free on 127.0.0.1 at the time of the call.

    Returns
    -------
    int
        A port the kernel just handed out; another process could take it before the caller
        binds it, which is unlikely enough on a test machine.
    """
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# --- load ----------------------------------------------------------------------------------------


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--cpu-hog",
        type=int,
        default=int(os.environ.get(CPU_HOG_ENV, "0") or 0),
        metavar="N",
        help=f"run the session beside N busy processes (default ${CPU_HOG_ENV} or 0)",
    )


def pytest_configure(config: pytest.Config) -> None:
    capture_guard.install(config)
    n = int(config.getoption("--cpu-hog"))
    if n > 0 and not hasattr(config, "workerinput"):  # xdist workers share the controller's
        stack = ExitStack()
        stack.enter_context(start_cpu_hog(n))
        config.add_cleanup(stack.close)


@pytest.fixture
def cpu_hog() -> Iterator[CpuHog]:
    """Two busy processes (pure-Python spin loops) for the test; always stopped after it."""
    with start_cpu_hog(2) as hog:
        yield hog


@pytest.fixture(scope="session", autouse=True)
def _agents_fork_from_a_warm_interpreter() -> Iterator[None]:
    """Silo agents and services started through `flows.processes` (start_agent, start_service,
    the fault helpers) run as forks of a forkserver that has their libraries imported
    (tests/support/prewarmed.py); every other process, and every agent or service a test starts
    by its own command line, as before."""
    if not prewarmed.enabled():
        yield
        return
    from support import fault_helpers

    import flows.processes

    plain = flows.processes.spawn

    def spawn(name: str, args: list[str], log_path: Path, env: dict[str, str]) -> Proc:
        if prewarmed.forks(args):
            return prewarmed.spawn(name, args, log_path, env)
        return plain(name, args, log_path, env)

    flows.processes.spawn = spawn
    fault_helpers.spawn = spawn
    try:
        yield
    finally:
        flows.processes.spawn = fault_helpers.spawn = plain
        prewarmed.kill_leftovers()


@pytest.fixture(scope="session")
def free_port_factory() -> Callable[[], int]:
    """Callable returning a free port on 127.0.0.1 each time it is called."""
    return free_port


# --- databases ---------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def pg_url() -> str:
    """SQLAlchemy URL of the test PostgreSQL database (``FEDSILO_TEST_PG_URL``).

    Skips the test when the variable is unset, except under ``CI=true`` where it fails.
    """
    url = os.environ.get(PG_URL_ENV, "")
    if url:
        return url
    hint = f'start one with: eval "$(scripts/pg-test-server start)" (sets {PG_URL_ENV})'
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{PG_URL_ENV} is not set under CI=true, PostgreSQL tests cannot run; {hint}")
    pytest.skip(f"{PG_URL_ENV} is not set; {hint}")


def _libpq_dsn(url: URL) -> str:
    """Turn a SQLAlchemy URL (``postgresql+psycopg://...``) into a DSN psycopg accepts."""
    return url.set(drivername="postgresql").render_as_string(hide_password=False)


@contextmanager
def _fresh_database(server_url: str) -> Iterator[str]:
    """Create an empty database with a unique name on the server of ``server_url``; drop it after.

    The role in ``server_url`` needs CREATEDB (``scripts/pg-test-server`` grants it).
    """
    admin = make_url(server_url)
    name = f"fedsilo_t_{uuid.uuid4().hex[:16]}"
    with psycopg.connect(_libpq_dsn(admin), autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield admin.set(database=name).render_as_string(hide_password=False)
    finally:
        _drop_database(_libpq_dsn(admin), name)


DROP_RETRY_S = 120.0


def _drop_database(dsn: str, name: str) -> None:
    """DROP ... WITH (FORCE): a test that forgot engine.dispose() must not keep the database
    alive. FORCE cannot end an autovacuum worker's session (it belongs to no role our role is
    a member of), so while one is on the database the drop is retried until it has left."""
    deadline = time.monotonic() + DROP_RETRY_S
    with psycopg.connect(dsn, autocommit=True) as conn:
        while True:
            try:
                conn.execute(
                    sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
                )
                return
            except psycopg.errors.InsufficientPrivilege:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)  # an autovacuum pass on a test database takes milliseconds


@pytest.fixture(scope="session")
def pg_database_factory(pg_url: str) -> Callable[[], AbstractContextManager[str]]:
    """Factory of context managers, each yielding the URL of a new empty PostgreSQL database.

    For tests that need several databases at once (two services, say); each database is dropped
    when its ``with`` block ends.
    """

    def factory() -> AbstractContextManager[str]:
        return _fresh_database(pg_url)

    return factory


@pytest.fixture
def fresh_pg_url(pg_database_factory: Callable[[], AbstractContextManager[str]]) -> Iterator[str]:
    """SQLAlchemy URL of a new empty PostgreSQL database, dropped after the test."""
    with pg_database_factory() as url:
        yield url


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    """SQLAlchemy URL of a SQLite file in the test's own temporary folder."""
    return f"sqlite:///{tmp_path}/service.db"


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest) -> str:
    """Empty database URL on each backend in turn: SQLite, then a fresh PostgreSQL database."""
    if request.param == "sqlite":
        return str(request.getfixturevalue("sqlite_url"))
    return str(request.getfixturevalue("fresh_pg_url"))


# --- Prefect server ----------------------------------------------------------------------------


def _prefect_executable() -> str:
    """The ``prefect`` command of the interpreter running the tests."""
    beside = Path(sys.executable).with_name("prefect")
    if beside.exists():
        return str(beside)
    found = shutil.which("prefect")
    if found is None:
        pytest.fail("no `prefect` command beside this Python or on PATH: run `make venv`")
    return found


def _wait_healthy(api_url: str, proc: subprocess.Popen[bytes], log: Path) -> None:
    """Poll ``{api_url}/health`` until it answers 200; fail with the server's log otherwise."""
    deadline = time.monotonic() + PREFECT_START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"prefect server exited with {proc.returncode}:\n{log.read_text()[-4000:]}")
        try:
            if httpx.get(f"{api_url}/health", timeout=2.0).status_code == 200:
                return
        except httpx.TransportError:
            pass  # not listening yet
        time.sleep(0.5)
    pytest.fail(
        f"prefect server not healthy after {PREFECT_START_TIMEOUT_S:.0f} s:\n"
        f"{log.read_text()[-4000:]}"
    )


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """Stop the server's whole process group (``prefect server start`` runs uvicorn children)."""
    if proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=20)


@pytest.fixture(scope="session")
def prefect_api_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """URL of a running Prefect API (``http://127.0.0.1:PORT/api``).

    Uses ``PREFECT_API_URL`` when set. Otherwise starts ``prefect server start`` with its own
    PREFECT_HOME for the session, and points the environment (for subprocesses) and the
    Prefect settings of this process, every thread's (read once at import), at it.
    """
    from prefect.context import refresh_global_settings_context

    existing = os.environ.get("PREFECT_API_URL")
    if existing:
        yield existing.rstrip("/")
        return
    home = tmp_path_factory.mktemp("prefect-home")
    port = free_port()
    api_url = f"http://127.0.0.1:{port}/api"
    env = dict(os.environ, PREFECT_HOME=str(home), PREFECT_UI_ENABLED="false")
    log = home / "server.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [_prefect_executable(), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        _wait_healthy(api_url, proc, log)
        from prefect.settings import PREFECT_API_URL, temporary_settings

        os.environ["PREFECT_API_URL"] = api_url
        # threads that carry no settings context of their own (a flow run in a test's thread,
        # Prefect's log worker) read the process-global one, built at import without this URL:
        # their flow runs and logs went to an ephemeral API the tests never read
        refresh_global_settings_context()
        with temporary_settings(updates={PREFECT_API_URL: api_url}):
            yield api_url
    finally:
        os.environ.pop("PREFECT_API_URL", None)
        refresh_global_settings_context()
        _stop(proc)


# --- scheduling ----------------------------------------------------------------------------------


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Under pytest-xdist, the longest test files first (support/schedule.py says why); a run
    in one process keeps pytest's order. Tests marked ``slow`` (bench-sized measurements of
    many minutes) run only with ``FEDSILO_TEST_SLOW=1`` (``make test-slow``)."""
    if os.environ.get(SLOW_ENV) != "1":
        skip = pytest.mark.skip(reason=f"a minutes-long measurement: run with {SLOW_ENV}=1")
        for item in items:
            if item.get_closest_marker("slow"):
                item.add_marker(skip)
    if hasattr(config, "workerinput"):
        longest_files_first(items, Path(__file__).parent)


_PHASE_SECONDS: list[tuple[str, float]] = []
FILE_TIMES_SHOWN = 30


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    """Remember each phase's duration (under xdist the controller sees every worker's)."""
    _PHASE_SECONDS.append((report.nodeid, report.duration))


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Seconds per test file, longest first: what tests/support/schedule.py's table and the
    next cut of CI time need (pytest's --durations lists single tests, not files)."""
    if hasattr(terminalreporter.config, "workerinput") or not _PHASE_SECONDS:
        return
    totals = seconds_by_file(_PHASE_SECONDS)
    terminalreporter.write_sep("=", f"seconds per test file (the {FILE_TIMES_SHOWN} longest)")
    for path, seconds in totals[:FILE_TIMES_SHOWN]:
        terminalreporter.write_line(f"{seconds:8.1f}s  {path}")
    rest = sum(seconds for _, seconds in totals[FILE_TIMES_SHOWN:])
    terminalreporter.write_line(
        f"{rest:8.1f}s  the other {max(len(totals) - FILE_TIMES_SHOWN, 0)} files"
    )
