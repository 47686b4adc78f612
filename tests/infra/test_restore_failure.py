"""`aggregator restore --force` on PostgreSQL: a restore that fails leaves the hub exactly as it
was (database, keys, models), and a backup of an older schema goes onto a database a newer
release migrated (serve then migrates it)."""

from __future__ import annotations

from pathlib import Path

import pytest
from alembic import command
from sqlalchemy import create_engine, text
from support.live_service import coordinator, enrolled_silo, service_in_thread

from aggregation.backup import BackupError, backup, restore
from aggregation.service.db import make_engine
from aggregation.service.keys import load_or_create_service_key
from aggregation.service.main import create_app
from aggregation.service.migrate import alembic_config
from aggregation.service.settings import ServiceSettings

pytestmark = pytest.mark.postgres


def _hub_with_entries(workspace: Path, url: str) -> ServiceSettings:
    with service_in_thread(workspace, url) as service:
        coord = coordinator(service)
        coord.create_federation("heart")
        enrolled_silo(service, coord, "heart", "cleveland")
    return ServiceSettings(workspace=workspace, database_url=url)


def _scalar(url: str, sql: str) -> object:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            return conn.execute(text(sql)).scalar()
    finally:
        engine.dispose()


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def test_a_failed_restore_changes_nothing(fresh_pg_url: str, tmp_path: Path) -> None:
    ws = tmp_path / "hub"
    settings = _hub_with_entries(ws, fresh_pg_url)
    backup(settings, tmp_path / "b")
    (ws / "models").mkdir(exist_ok=True)
    (ws / "models" / "kept.bin").write_bytes(b"a model of the live hub")
    entries = _scalar(fresh_pg_url, "SELECT count(*) FROM ledger_entries")
    before = {"keys": _files(ws / "keys"), "models": _files(ws / "models")}
    # a reporting view a DBA added: the restore cannot drop ledger_entries under it
    engine = create_engine(fresh_pg_url)
    with engine.begin() as conn:
        conn.execute(text("CREATE VIEW ledger_report AS SELECT seq, kind FROM ledger_entries"))
    engine.dispose()
    with pytest.raises(BackupError, match="Nothing was changed") as failed:
        restore(settings, tmp_path / "b", force=True)
    assert "ledger_report" in str(failed.value)
    assert {"keys": _files(ws / "keys"), "models": _files(ws / "models")} == before
    assert _scalar(fresh_pg_url, "SELECT count(*) FROM ledger_entries") == entries
    assert not list(ws.glob(".restoring-*"))  # no staging left behind
    # the view gone, the same restore goes through: the backup's keys and ledger, no old model
    engine = create_engine(fresh_pg_url)
    with engine.begin() as conn:
        conn.execute(text("DROP VIEW ledger_report"))
    engine.dispose()
    report = restore(settings, tmp_path / "b", force=True)
    assert report.ok and report.head_seq == entries
    assert _files(ws / "keys") == before["keys"]
    assert not (ws / "models" / "kept.bin").exists()


def test_a_backup_of_an_older_schema_restores_onto_a_migrated_database(
    fresh_pg_url: str, fresh_pg_url_2: str, tmp_path: Path
) -> None:
    # a hub on schema 0011 (an older release), backed up
    old_ws = tmp_path / "old"
    load_or_create_service_key(old_ws)
    engine = make_engine(fresh_pg_url_2)
    with engine.begin() as conn:
        cfg = alembic_config(fresh_pg_url_2)
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "0011")
    engine.dispose()
    backup(ServiceSettings(workspace=old_ws, database_url=fresh_pg_url_2), tmp_path / "b")
    # restored over a hub this release migrated (secagg_shares' foreign key on rounds)
    settings = _hub_with_entries(tmp_path / "hub", fresh_pg_url)
    report = restore(settings, tmp_path / "b", force=True)
    assert report.ok and report.head_seq == 0
    assert _scalar(fresh_pg_url, "SELECT version_num FROM alembic_version") == "0011"
    app = create_app(settings)  # serve migrates it to this release's schema
    app.state.engine.dispose()
    assert _scalar(fresh_pg_url, "SELECT version_num FROM alembic_version") != "0011"


@pytest.fixture
def fresh_pg_url_2(pg_database_factory):  # type: ignore[no-untyped-def]
    with pg_database_factory() as url:
        yield url
