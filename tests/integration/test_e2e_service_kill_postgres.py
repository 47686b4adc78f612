"""The aggregation service killed mid-round on PostgreSQL: a federation of its own on a fresh
database (the SQLite cases share test_federation_e2e.py's federation). A file of its own so that
pytest-xdist runs it beside the other federation tests."""

from __future__ import annotations

from pathlib import Path

import pytest
from support.e2e_kill import kill_service_mid_round
from support.fault_helpers import start_federation

pytestmark = [pytest.mark.integration, pytest.mark.postgres, pytest.mark.timeout(1800)]


def test_service_killed_mid_round_loses_and_duplicates_nothing_on_postgres(
    tmp_path: Path, prefect_api_url: str, fresh_pg_url: str
) -> None:
    fed = start_federation(tmp_path, prefect_api_url, fresh_pg_url)
    try:
        kill_service_mid_round(fed, tmp_path / "models", secure=False)
    finally:
        fed.stop()
