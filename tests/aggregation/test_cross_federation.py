"""A silo name is unique within its federation only: a silo of another federation with the
same name (approved there, and even holding the same key: one institution in two
federations) is no participant of this federation's runs, horizontal or vertical. Before,
membership was looked up by name alone, so `hungary` of federation B could download A's
model, sign statements and send updates into A's rounds, and take `alice`'s place in A's
vertical run (its key, its envelopes)."""

from __future__ import annotations

import os
import uuid

import pytest
from support.api_federation import WIRE, Fed, deltas, new_federation, payload
from support.live_service import coordinator, enrolled_silo

from flows.vertical import create_vertical_run
from silos.client import SiloClient
from silos.client_errors import ServiceRejected


def _namesake(fed: Fed, name: str) -> SiloClient:
    """Silo `name`, approved in a second federation of the same service (the same key, as
    one institution would enrol in both)."""
    other = f"o-{uuid.uuid4().hex[:12]}"
    fed.coord.create_federation(other)
    return enrolled_silo(fed.url, fed.coord, other, name)


def _refused(call: object, *args: object, **kwargs: object) -> str:
    with pytest.raises(ServiceRejected) as refused:
        call(*args, **kwargs)  # type: ignore[operator]
    assert refused.value.status == 403, refused.value.detail
    return refused.value.detail


def test_a_namesake_of_another_federation_is_no_participant(api_service_url: str) -> None:
    fed = new_federation(api_service_url)
    namesake = _namesake(fed, "a")
    detail = _refused(namesake.download_model, fed.run_id, 0)
    assert "silo 'a' of federation" in detail and f"not a participant of run {fed.run_id}" in detail
    _refused(namesake.submit_update, fed.run_id, 1, payload(deltas(1), fed.run_id, 1))
    _refused(namesake.submit_statement, fed.run_id, "privacy_spent", {"silo": "a", "round": 1})
    assert namesake.next_task(wait_s=0) is None  # A's round is not offered to B's "a"
    # the real participant is untouched: its update is still the round's first
    first = fed.silos["a"].submit_update(fed.run_id, 1, payload(deltas(2), fed.run_id, 1))
    assert first["duplicate"] is False


def test_a_namesake_is_no_party_of_another_federations_vertical_run(
    api_service_url: str,
) -> None:
    name = f"v-{uuid.uuid4().hex[:12]}"
    coord = coordinator(api_service_url)
    coord.create_federation(name)
    parties = {s: enrolled_silo(api_service_url, coord, name, s) for s in ("bank", "bureau")}
    run = create_vertical_run(coord, name, "bank", list(parties)).run_id
    other = f"o-{uuid.uuid4().hex[:12]}"
    coord.create_federation(other)
    namesake = enrolled_silo(api_service_url, coord, other, "bank")
    base = f"/v1/silo/vertical/{run}"
    detail = _refused(namesake.request, "PUT", base + "/key", body=os.urandom(32))
    assert f"silo 'bank' of federation '{other}' is not a party of vertical run {run}" in detail
    _refused(namesake.request, "GET", base + "/keys")
    key = os.urandom(32)
    parties["bank"].request("PUT", base + "/key", body=key)  # the real party's key is taken
    assert parties["bureau"].request("GET", base + "/keys").json()["bank"] == key.hex()


@pytest.mark.parametrize("path", ["/v1/federations", "/v1/ledger/keys", "/metrics"])
def test_a_non_ascii_bearer_token_is_unauthorized_not_a_500(
    api_service_url: str, path: str
) -> None:
    """hmac.compare_digest raises TypeError on str holding non-ASCII characters."""
    import httpx

    headers = {**WIRE, "Authorization": b"Bearer \xe9\xff"}
    answer = httpx.get(api_service_url + path, headers=headers)
    assert answer.status_code == 401, answer.text
