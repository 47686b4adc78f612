"""Fixtures of the fault tests: a PostgreSQL cluster of their own, which a test may restart
without disturbing the database every other test shares."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.pg_cluster import PgCluster


def _have_postgres() -> bool:
    return any(Path("/usr/lib/postgresql").glob("*/bin/initdb")) or bool(
        os.environ.get("FEDSILO_TEST_PG_URL")
    )


@pytest.fixture(scope="module")
def own_pg_cluster() -> Iterator[PgCluster]:
    """A new cluster (port FEDSILO_FAULT_PG_PORT, else a free one), removed afterwards."""
    if not _have_postgres():
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail("PostgreSQL is not installed under CI=true")
        pytest.skip("PostgreSQL is not installed (scripts/pg-test-server installs it as root)")
    port = os.environ.get("FEDSILO_FAULT_PG_PORT")
    try:
        cluster = PgCluster.start(int(port) if port else None)
    except RuntimeError as exc:
        if "in use" not in str(exc):
            raise
        cluster = PgCluster.start(None)  # the port is taken (or lingers in TIME_WAIT)
    try:
        yield cluster
    finally:
        cluster.remove()
