"""A silo whose data export lost a column declines every round (its gate names the column) and
the run goes on without it; a federation of its own, in a file of its own so that pytest-xdist
runs it beside the other federation tests."""

from __future__ import annotations

from pathlib import Path

import pytest
from support.fault_helpers import start_federation, train

pytestmark = [pytest.mark.integration, pytest.mark.timeout(1800)]
# One training round and the evaluation round: the silo is asked again after it declined once
# and declines again, which is what a second training round showed too (at a round's cost).
ROUNDS = 1


def test_silo_with_bad_data_declines_and_the_run_goes_on(
    tmp_path: Path, prefect_api_url: str
) -> None:
    fed = start_federation(tmp_path, prefect_api_url, break_data="hungary")
    try:
        result = train(fed.urls, fed.token, tmp_path / "models", rounds=ROUNDS)
        entries = fed.coord.ledger(result["run_id"])
    finally:
        fed.stop()
    assert [r["kind"] for r in result["rounds"]] == ["train"] * ROUNDS + ["evaluate"]
    for record in result["rounds"]:
        assert "hungary" not in record["contributors"]
        # it declined each round (cause: its data), naming the column its export lost
        assert record["declined"]["hungary"].startswith("data:"), record
        assert "age" in record["declined"]["hungary"]
    validations = [e for e in entries if e.kind == "validation_result"]
    by_author = {e.author: e.payload for e in validations}
    assert '"success":false' in by_author["silo:hungary"]
    assert '"success":true' in by_author["silo:cleveland"]
    assert len(validations) == 4 * (ROUNDS + 1)  # every silo, every round (and the evaluation)
    assert (tmp_path / "silos" / "hungary" / "workspace" / "data_docs").exists()
