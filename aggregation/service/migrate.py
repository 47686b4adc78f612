"""Bring a database to the newest schema with Alembic (run at service start)."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, text

MIGRATIONS = Path(__file__).parent / "migrations"
# pg_advisory_xact_lock key ("fedsilo" + "mig" in ASCII, any constant would do): held by the
# upgrading transaction, so concurrent starts (`serve` replicas, `aggregator migrate`) on one
# database migrate one after the other: the next sees the schema the first committed.
MIGRATION_LOCK = 0x666564_6D6967


def alembic_config(url: str) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def upgrade(engine: Engine) -> None:
    """Apply every pending migration inside one connection."""
    cfg = alembic_config(str(engine.url))
    with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK})
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "head")
