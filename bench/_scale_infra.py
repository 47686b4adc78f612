"""Processes and databases around bench/scale.py: psutil probes of the service and of
PostgreSQL, a fresh database per trial, a throwaway cluster when none is configured."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


class ServiceProbe:
    """CPU times and peak RSS of the service process (psutil), sampled every 20 ms."""

    def __init__(self, pid: int) -> None:
        import psutil

        self.proc = psutil.Process(pid)
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        while not self._stop.wait(0.02):
            try:
                self.peak = max(self.peak, self.proc.memory_info().rss)
            except Exception:  # the process is gone: nothing more to sample
                return

    def cpu(self) -> float:
        t = self.proc.cpu_times()
        return float(t.user + t.system)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def postgres_cpu() -> float | None:
    """CPU seconds used so far by the PostgreSQL cluster at FEDSILO_TEST_PG_DATA (postmaster,
    its live backends, and the backends that exited), or None when unknown."""
    import psutil

    data = os.environ.get("FEDSILO_TEST_PG_DATA", "")
    pid_file = Path(data) / "data" / "postmaster.pid"
    if not data or not pid_file.exists():
        return None
    try:
        master = psutil.Process(int(pid_file.read_text().split()[0]))
        t = master.cpu_times()
        total = t.user + t.system + t.children_user + t.children_system
        for child in master.children():
            with contextlib.suppress(psutil.Error):
                c = child.cpu_times()
                total += c.user + c.system
        return float(total)
    except (psutil.Error, ValueError):
        return None


@contextmanager
def fresh_database(url: str) -> Iterator[str]:
    """A new empty database on the server of `url`, dropped afterwards; `url` itself when the
    role may not create databases."""
    import psycopg
    from psycopg import sql
    from sqlalchemy.engine import make_url

    admin = make_url(url)
    dsn = admin.set(drivername="postgresql").render_as_string(hide_password=False)
    name = f"fedsilo_scale_{uuid.uuid4().hex[:12]}"
    try:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    except psycopg.Error as exc:
        print(f"(cannot create a database, using {admin.database} as is: {exc})")
        yield url
        return
    try:
        yield admin.set(database=name).render_as_string(hide_password=False)
    finally:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


@contextmanager
def throwaway_postgres() -> Iterator[str]:
    """A PostgreSQL cluster of scripts/pg-test-server for this run (`make bench` without
    FEDSILO_TEST_PG_URL); its URL, stopped and removed afterwards."""
    script = ROOT / "scripts" / "pg-test-server"
    out = subprocess.run([str(script), "start"], check=True, capture_output=True, text=True)
    env = dict(
        line.removeprefix("export ").split("=", 1)
        for line in out.stdout.splitlines()
        if line.startswith("export ")
    )
    os.environ["FEDSILO_TEST_PG_DATA"] = env["FEDSILO_TEST_PG_DATA"]  # for postgres_cpu()
    try:
        yield env["FEDSILO_TEST_PG_URL"]
    finally:
        subprocess.run([str(script), "stop", env["FEDSILO_TEST_PG_DATA"]], check=False)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def request_counts(urls: list[str], token: str) -> dict[str, list[float]]:
    """Requests so far and seconds spent answering them, per "METHOD route", and database
    statements and their seconds per "SQL OPERATION", summed over the service replicas at
    `urls` (their Prometheus ``/metrics``)."""
    import httpx
    from prometheus_client.parser import text_string_to_metric_families

    out: dict[str, list[float]] = {}
    for url in urls:
        text = httpx.get(f"{url}/metrics", headers={"Authorization": f"Bearer {token}"}).text
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                labels = sample.labels
                if sample.name == "fedsilo_http_requests_total":
                    key, slot = f"{labels['method']} {labels['route']}", 0
                elif sample.name == "fedsilo_http_request_duration_seconds_sum":
                    key, slot = f"{labels['method']} {labels['route']}", 1
                elif sample.name == "fedsilo_db_statement_duration_seconds_count":
                    key, slot = f"SQL {labels['operation']}", 0
                elif sample.name == "fedsilo_db_statement_duration_seconds_sum":
                    key, slot = f"SQL {labels['operation']}", 1
                else:
                    continue
                out.setdefault(key, [0.0, 0.0])[slot] += sample.value
    return out
