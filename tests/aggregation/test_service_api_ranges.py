"""Out-of-range numbers in the aggregation service's API (paths, queries, JSON bodies, update
metadata) are refused with 422 naming the field, on SQLite and PostgreSQL. The module's tests
share one service per backend (`api_service_url`), each with a federation of its own."""

from __future__ import annotations

import httpx
import pytest
from support.api_federation import NAMES, WIRE, Fed, deltas, new_federation, payload, states

from schemas import tensors
from silos.client_errors import ServiceRejected


@pytest.fixture
def fed(api_service_url: str) -> Fed:
    return new_federation(api_service_url)


BIG = str(2**63 + 1)


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/v1/runs?limit=" + BIG),
        ("GET", "/v1/runs?limit=-1"),
        ("GET", "/v1/runs?limit=0"),
        ("GET", "/v1/ledger?after=" + BIG),
        ("GET", "/v1/ledger?after=-1"),
        ("GET", "/v1/ledger?limit=-1"),
        ("GET", "/v1/runs/{run}/rounds/" + BIG),
        ("GET", "/v1/runs/{run}/rounds/1?wait=" + BIG),
        ("GET", "/v1/runs/{run}/rounds/1?wait=inf"),
        ("GET", "/v1/runs/{run}/models/" + BIG + "/admin"),
        ("POST", "/v1/runs/{run}/rounds/" + BIG + "/close"),
    ],
)
def test_out_of_range_numbers_are_422_naming_the_field(fed: Fed, method: str, path: str) -> None:
    headers = {"Authorization": "Bearer test-admin-token", **WIRE}
    resp = httpx.request(method, fed.url + path.format(run=fed.run_id), headers=headers)
    assert resp.status_code == 422, resp.text
    body = resp.json()
    assert body["code"] == "invalid_payload"
    field = (
        path.split("?")[-1].split("=")[0]
        if "?" in path
        else ("version" if "models" in path else "number")
    )
    assert field in body["detail"]


def test_oversized_numbers_in_json_bodies_are_422(fed: Fed) -> None:
    headers = {"Authorization": "Bearer test-admin-token", **WIRE}
    body = {"round": 2**63 + 1, "deadline_s": 10}
    resp = httpx.post(f"{fed.url}/v1/runs/{fed.run_id}/rounds", json=body, headers=headers)
    assert resp.status_code == 422 and "round" in resp.json()["detail"]
    resp = httpx.post(
        f"{fed.url}/v1/runs/{fed.run_id}/rounds",
        content=b'{"round": 2, "deadline_s": 1e400}',
        headers={"content-type": "application/json", **headers},
    )
    assert resp.status_code == 422 and "deadline_s" in resp.json()["detail"]


@pytest.mark.parametrize("n", [BIG, "-1", "0"])
def test_out_of_range_n_examples_in_update_metadata_is_422(fed: Fed, n: str) -> None:
    md = {"run_id": fed.run_id, "round": "1", "n_examples": n}
    body = tensors.encode(dict(zip(NAMES, deltas(1), strict=True)), md)
    with pytest.raises(ServiceRejected) as err:
        fed.silos["a"].submit_update(fed.run_id, 1, body)
    assert err.value.status == 422 and "n_examples" in str(err.value)
    assert states(fed)["a"] == "waiting"


def test_out_of_range_round_in_a_silo_path_is_422(fed: Fed) -> None:
    with pytest.raises(ServiceRejected) as err:
        fed.silos["a"].submit_update(fed.run_id, 2**63 + 1, payload(deltas(1), fed.run_id, 1))
    assert err.value.status == 422 and "number" in str(err.value)
