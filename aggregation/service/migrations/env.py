"""Alembic environment: runs migrations on the connection or URL the service hands over."""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine

from aggregation.service import ledger, tables  # noqa: F401  (registers the tables on Base.metadata)
from aggregation.service.db import Base

config = context.config
target_metadata = Base.metadata


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        context.configure(connection=connection, target_metadata=target_metadata)
        with context.begin_transaction():
            context.run_migrations()
        return
    engine = create_engine(config.get_main_option("sqlalchemy.url") or "")
    with engine.connect() as conn:
        context.configure(connection=conn, target_metadata=target_metadata)
        with context.begin_transaction():
            context.run_migrations()


run_migrations_online()
