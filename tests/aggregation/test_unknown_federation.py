"""Every route that names a federation answers 404 naming it when it does not exist: a
misspelt federation is never an empty list, an unenrolled silo or a missing contract."""

from __future__ import annotations

from pathlib import Path

import pytest
from support.live_service import coordinator, enrolled_silo, service_in_thread

from schemas.specs import ModelSpec, RunSpec, SecureAggregationSpec
from schemas.vertical import VerticalRunCreate
from schemas.wire import RunCreate
from silos.client_errors import NotFound

UNKNOWN = "federation 'hreat' does not exist; create it with `fedsilo federation create hreat`"


def test_federation_routes_name_an_unknown_federation(sqlite_url: str, tmp_path: Path) -> None:
    with service_in_thread(tmp_path / "svc", sqlite_url) as url:
        coord = coordinator(url)
        coord.create_federation("heart")
        enrolled_silo(url, coord, "heart", "a")
        enrolled_silo(url, coord, "heart", "b")
        spec = RunSpec(
            federation="hreat",
            dataset="toy",
            model=ModelSpec(kind="logreg", n_features=3),
            secure_aggregation=SecureAggregationSpec(enabled=False),
        )
        vertical = VerticalRunCreate(federation="hreat", active="a", parties=["a", "b"])
        calls = {
            "runs": lambda: coord.list_runs("hreat"),
            "vertical runs": lambda: coord.request("GET", "/v1/vertical/runs?federation=hreat"),
            "silos": lambda: coord.silos("hreat"),
            "approve": lambda: coord.request("POST", "/v1/federations/hreat/silos/a/approve"),
            "revoke": lambda: coord.request("POST", "/v1/federations/hreat/silos/a/revoke"),
            "contracts": lambda: coord.contracts("hreat"),
            "contract": lambda: coord.contract("hreat", "heart_disease"),
            "create run": lambda: coord.create_run(RunCreate(spec=spec)),
            "create vertical run": lambda: coord.request(
                "POST", "/v1/vertical/runs", json_body=vertical
            ),
        }
        for what, call in calls.items():
            with pytest.raises(NotFound) as err:
                call()
            assert err.value.detail.startswith(UNKNOWN), (what, err.value.detail)
        # the known federation: empty lists, and the silo that has not enrolled is named
        assert coord.list_runs("heart") == []
        assert coord.request("GET", "/v1/vertical/runs?federation=heart").json() == []
        with pytest.raises(NotFound) as err:
            coord.approve("heart", "c")
        assert err.value.detail == "silo 'c' has not enrolled in federation 'heart'"
        assert [s.status for s in coord.silos("heart")] == ["approved", "approved"]
