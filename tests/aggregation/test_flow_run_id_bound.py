"""An update's ``prefect_flow_run_id`` metadata longer than its 64-character column is refused
at the API with an error naming the silo, round and run, in synchronous rounds and in
asynchronous (FedBuff) buffers alike: never cut short (a truncated id points at no flow run),
and nothing of the refused update is stored. Real HTTP, SQLite and PostgreSQL."""

from __future__ import annotations

import pytest
from support.api_federation import Fed, deltas, new_federation, payload
from test_async_rounds import N, async_federation

from silos.client_errors import ServiceRejected

TOO_LONG = "f" * 65
LONGEST = "0" * 64


def _refused_then_accepted(fed: Fed, n: int) -> dict[str, object]:
    """Send silo a's update with a 65-character id (refused), then the same update with a
    64-character one (accepted as new: the refusal stored nothing)."""
    body = payload(deltas(1), fed.run_id, 1, n=n, prefect_flow_run_id=TOO_LONG)
    with pytest.raises(ServiceRejected) as err:
        fed.silos["a"].submit_update(fed.run_id, 1, body)
    message = str(err.value)
    assert err.value.status == 422
    assert "silo 'a'" in message and "round 1" in message and fed.run_id in message
    assert "prefect_flow_run_id" in message and "at most 64" in message and "got 65" in message
    ok = payload(deltas(1), fed.run_id, 1, n=n, prefect_flow_run_id=LONGEST)
    return fed.silos["a"].submit_update(fed.run_id, 1, ok)


def test_synchronous_round_refuses_an_overlong_flow_run_id(api_service_url: str) -> None:
    fed = new_federation(api_service_url)
    accepted = _refused_then_accepted(fed, n=10)
    assert not accepted.get("duplicate")
    assert fed.coord.wait_round(fed.run_id, 1, 0).status == "open"  # a alone: 1 of 3


def test_asynchronous_buffer_refuses_an_overlong_flow_run_id(api_service_url: str) -> None:
    fed = async_federation(api_service_url, max_staleness=2)
    accepted = _refused_then_accepted(fed, n=N["a"])
    assert not accepted["duplicate"] and accepted["buffer"] == 1
    assert fed.coord.wait_round(fed.run_id, 1, 0).status == "open"  # 1 of K=2
    b = payload(deltas(2), fed.run_id, 1, n=N["b"])
    fed.silos["b"].submit_update(fed.run_id, 1, b)
    assert fed.coord.wait_round(fed.run_id, 1, 0).status == "aggregated"  # a's update counted
