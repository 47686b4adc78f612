"""The upgrade path: a hub made by the previous release (schema 0007) migrates to this one.

``data/release-0007-hub.tar.gz`` is a service workspace written by the previous release
(commit f3e55a7, Alembic head 0007) running a real federation: four UCI hospitals' agents,
a 2-round logreg run, the service's keys, model files and ledger (remade with
``data/make_release_hub.py``). The test migrates it with
`fedsilo aggregator migrate` (on SQLite as shipped, and on PostgreSQL after copying the rows
into a database built at revision 0007), then checks every row, model and ledger entry is
still there, the ledger verifies, and the upgraded service serves the old run.
"""

from __future__ import annotations

import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
from alembic import command
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Integer, MetaData, create_engine, text
from support.live_service import coordinator, service_in_thread

from aggregation.backup import verify_ledger
from aggregation.service.migrate import alembic_config
from aggregation.service.settings import ServiceSettings
from flows.processes import base_env

FIXTURE = Path(__file__).parent / "data" / "release-0007-hub.tar.gz"
PREVIOUS = "0007"
REPO = Path(__file__).resolve().parents[2]
TABLES = ("federations", "silos", "runs", "rounds", "contributions", "models", "ledger_entries")


def _unpack(tmp_path: Path) -> Path:
    workspace = tmp_path / "hub"
    with tarfile.open(FIXTURE) as tar:
        tar.extractall(workspace, filter="data")
    return workspace


def _revision(url: str) -> str | None:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            return MigrationContext.configure(conn).get_current_revision()
    finally:
        engine.dispose()


def _state(url: str) -> dict[str, object]:
    """Row counts, the ledger head and the stored models' digests."""
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            out: dict[str, object] = {
                t: conn.execute(text(f"SELECT count(*) FROM {t}")).scalar_one() for t in TABLES
            }
            out["head"] = tuple(
                conn.execute(
                    text("SELECT seq, entry_hash FROM ledger_entries ORDER BY seq DESC LIMIT 1")
                ).one()
            )
            out["models"] = sorted(
                tuple(r) for r in conn.execute(text("SELECT run_id, version, sha256 FROM models"))
            )
            return out
    finally:
        engine.dispose()


def _copy_rows(source_url: str, target_url: str) -> None:
    """Build `target_url` at revision 0007 and copy every row of the 0007 SQLite hub into it."""
    cfg = alembic_config(target_url)
    engine = create_engine(target_url)
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, PREVIOUS)
    src = create_engine(source_url)
    meta = MetaData()
    meta.reflect(src)
    with src.connect() as read, engine.begin() as write:
        for table in meta.sorted_tables:
            if table.name == "alembic_version":
                continue
            rows = [dict(r._mapping) for r in read.execute(table.select())]
            if rows:
                write.execute(table.insert(), rows)
        if engine.dialect.name == "postgresql":  # copied ids: move the sequences past them
            for table in meta.sorted_tables:
                if "id" in table.c and isinstance(table.c.id.type, Integer):
                    write.execute(
                        text(
                            f"SELECT setval(pg_get_serial_sequence('{table.name}', 'id'), "
                            f"(SELECT coalesce(max(id), 0) + 1 FROM {table.name}), false) "
                            f"WHERE pg_get_serial_sequence('{table.name}', 'id') IS NOT NULL"
                        )
                    )
    src.dispose()
    engine.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def old_hub(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[Path, str]:
    workspace = _unpack(tmp_path)
    sqlite = f"sqlite:///{workspace / 'service.db'}"
    if request.param == "sqlite":
        return workspace, ""
    url = request.getfixturevalue("fresh_pg_url")
    _copy_rows(sqlite, url)
    (workspace / "service.db").unlink()
    return workspace, url


def test_previous_release_hub_migrates_with_rows_models_and_ledger(
    old_hub: tuple[Path, str],
) -> None:
    workspace, database_url = old_hub
    settings = ServiceSettings(workspace=workspace, database_url=database_url)
    url = settings.resolved_database_url()
    assert _revision(url) == PREVIOUS
    before = _state(url)
    assert before["runs"] and before["models"] and before["contributions"]
    head = ScriptDirectory.from_config(alembic_config(url)).get_current_head()
    assert head != PREVIOUS  # this release changed the schema: there is something to migrate
    args = [sys.executable, "-m", "flows.cli", "aggregator", "migrate"]
    args += ["--workspace", str(workspace), "--database-url", database_url]
    done = subprocess.run(
        args, capture_output=True, text=True, timeout=300, env=base_env(), cwd=REPO, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"{PREVIOUS} -> {head}" in done.stdout
    assert _revision(url) == head
    assert _state(url) == before
    report = verify_ledger(settings)  # chain, signatures, and every model file on disk
    assert report.ok, report
    assert (report.head_seq, report.head_hash) == before["head"]
    # the upgraded service starts on it (its own start-up migration is a no-op) and serves the
    # old run, its model and the whole ledger
    token = (workspace / "admin.token").read_text().strip()
    with service_in_thread(workspace, database_url, admin_token=token) as base:
        client = coordinator(base, token)
        runs = client.list_runs("heart")
        assert [r.status for r in runs] == ["finished"]
        run = runs[0]
        model = client.download_model(run.run_id, run.latest_model_version or 0)
        assert len(model) > 0
        client.create_federation("upgraded")
        assert len(client.ledger()) == before["ledger_entries"]
    assert verify_ledger(settings).ok
