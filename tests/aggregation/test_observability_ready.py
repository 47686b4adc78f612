"""/readyz touches the database: 200 when it answers with this release's schema, 503 with
the reason when it is unreachable or at another revision; /healthz stays liveness only."""

from __future__ import annotations

import socket
import threading
from pathlib import Path

import httpx
import pytest
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine, make_url, text
from support.live_service import free_port, service_in_thread
from support.prometheus import scrape, value

from aggregation.service.migrate import alembic_config

TOKEN = {"Authorization": "Bearer test-admin-token"}


class TcpProxy:
    """A TCP relay on 127.0.0.1 in front of PostgreSQL: stopping it cuts the service off
    from its database the way a network partition or a stopped server does."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target, self.port = target, free_port()
        self.server: socket.socket | None = None
        self.open: list[socket.socket] = []

    def start(self) -> None:
        self.server = socket.create_server(("127.0.0.1", self.port))
        threading.Thread(target=self._accept, args=(self.server,), daemon=True).start()

    def stop(self) -> None:
        assert self.server is not None
        self.server.shutdown(socket.SHUT_RDWR)  # wakes the accept() below
        self.server.close()
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


def test_readyz_names_a_schema_at_another_revision(tmp_path: Path) -> None:
    db = tmp_path / "service.db"
    head = ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head()
    with service_in_thread(tmp_path / "svc", f"sqlite:///{db}") as url:
        ready = httpx.get(url + "/readyz")
        assert ready.status_code == 200 and ready.json() == {"status": "ready"}
        engine = create_engine(f"sqlite:///{db}")
        with engine.begin() as conn:
            conn.execute(text("UPDATE alembic_version SET version_num = 'an_older_one'"))
        engine.dispose()
        stale = httpx.get(url + "/readyz")
        assert stale.status_code == 503
        reason = stale.json()["reason"]
        assert "at revision an_older_one" in reason and f"needs {head}" in reason
        assert httpx.get(url + "/healthz").status_code == 200  # liveness does not care
        m = scrape(httpx.get(url + "/metrics", headers=TOKEN).text)
        assert value(m, "fedsilo_ready") == 0


@pytest.mark.postgres
def test_readyz_is_503_while_postgres_is_unreachable(fresh_pg_url: str, tmp_path: Path) -> None:
    pg = make_url(fresh_pg_url)
    proxy = TcpProxy((pg.host or "127.0.0.1", pg.port or 5432))
    proxy.start()
    via_proxy = pg.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)
    try:
        with service_in_thread(tmp_path / "svc", via_proxy) as url:
            assert httpx.get(url + "/readyz").status_code == 200
            proxy.stop()
            for _ in range(2):  # the broken pooled connection, then a refused new one
                down = httpx.get(url + "/readyz", timeout=30)
                assert down.status_code == 503
                assert down.json()["reason"].startswith("database unreachable: OperationalError")
                assert str(pg.password) not in down.text  # never the credentials
                assert httpx.get(url + "/healthz").status_code == 200
            proxy.start()
            back = httpx.get(url + "/readyz", timeout=30)
            assert back.status_code == 200, back.text
    finally:
        if proxy.server is not None and proxy.server.fileno() != -1:
            proxy.stop()
