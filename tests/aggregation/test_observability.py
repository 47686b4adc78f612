"""Prometheus /metrics of the live service after a real round: rounds, declines, rejections,
long-polls, HTTP requests by route and DB latency; who may scrape it, and the ops port."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import numpy as np
import pytest
from support.live_service import coordinator, enrolled_silo, free_port, service_in_thread
from support.prometheus import scrape, value
from support.validation import validate_all

from flows.service_client import CoordinatorClient
from schemas import tensors
from schemas.specs import ModelSpec, RunSpec, SecureAggregationSpec, param_shapes
from schemas.wire import DeclinePayload, RoundOpen, RunCreate
from silos.client import SiloClient
from silos.client_errors import ServiceRejected

MODEL = ModelSpec(kind="logreg", n_features=3)
SPEC = RunSpec(
    federation="f",
    dataset="toy",
    model=MODEL,
    rounds=2,
    min_silos=2,
    secure_aggregation=SecureAggregationSpec(enabled=False),
)
SHAPES = param_shapes(MODEL)
UPDATE_ROUTE = "/v1/silo/runs/{run_id}/rounds/{number}/update"


def update(seed: int, run_id: str, n: int = 10) -> bytes:
    rng = np.random.default_rng(seed)
    arrays = {name: rng.normal(size=shape).astype(np.float32) for name, shape in SHAPES}
    return tensors.encode(arrays, {"run_id": run_id, "round": "1", "n_examples": str(n)})


@dataclass
class Fed:
    url: str
    ops_url: str
    coord: CoordinatorClient
    silos: dict[str, SiloClient]
    run_id: str


@pytest.fixture
def fed(db_url: str, tmp_path) -> Iterator[Fed]:  # type: ignore[no-untyped-def]
    ops_port = free_port()
    with service_in_thread(
        tmp_path / "svc", db_url, metrics_port=ops_port, metrics_token="scrape-token"
    ) as url:
        coord = coordinator(url)
        coord.create_federation("f")
        silos = {n: enrolled_silo(url, coord, "f", n) for n in ("a", "b", "c", "d")}
        run = coord.create_run(RunCreate(spec=SPEC))
        coord.put_initial_model(run.run_id, update(99, run.run_id))
        coord.start_run(run.run_id)
        yield Fed(url, f"http://127.0.0.1:{ops_port}", coord, silos, run.run_id)


def test_a_round_moves_every_counter(fed: Fed) -> None:
    fed.coord.open_round(fed.run_id, RoundOpen(round=1, deadline_s=60))
    validate_all(fed.silos, fed.run_id)
    for name, client in fed.silos.items():
        assert client.next_task(wait_s=1) is not None, name  # a long-poll that found work
    fed.silos["a"].submit_update(fed.run_id, 1, update(1, fed.run_id))
    fed.silos["b"].submit_update(fed.run_id, 1, update(2, fed.run_id))
    with pytest.raises(ServiceRejected) as err:  # a different second answer: already_answered
        fed.silos["a"].submit_update(fed.run_id, 1, update(3, fed.run_id))
    assert err.value.status == 409
    fed.silos["c"].sit_out(fed.run_id, 1, "chol is 0 in every row")
    decline = DeclinePayload(
        silo="d", run_id=fed.run_id, round=1, scope="round", cause="privacy_budget", reason="spent"
    )
    fed.silos["d"].submit_statement(fed.run_id, "decline", decline.model_dump())
    closed = fed.coord.close_round(fed.run_id, 1)
    assert closed.status == "aggregated"
    assert fed.silos["a"].next_task(wait_s=0.3) is None  # a long-poll that found nothing

    resp = httpx.get(fed.url + "/metrics", headers={"Authorization": "Bearer scrape-token"})
    assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/plain")
    m = scrape(resp.text)
    assert value(m, "fedsilo_rounds_opened_total", mode="plain", kind="train") == 1
    assert value(m, "fedsilo_rounds_closed_total", mode="plain", status="aggregated") == 1
    assert value(m, "fedsilo_round_duration_seconds_count", mode="plain") == 1
    assert value(m, "fedsilo_rejections_total", reason="already_answered") == 1
    assert value(m, "fedsilo_round_declines_total", kind="sat_out") == 1
    assert value(m, "fedsilo_round_declines_total", kind="declined", cause="privacy_budget") == 1
    assert value(m, "fedsilo_task_poll_wait_seconds_count", result="task") == 4
    assert value(m, "fedsilo_task_poll_wait_seconds_count", result="empty") == 1
    # the empty poll waited its 0.3 s; the ones that found work did not
    assert value(m, "fedsilo_task_poll_wait_seconds_sum", result="empty") >= 0.29
    assert value(m, "fedsilo_http_requests_total", route=UPDATE_ROUTE, status="201") == 2
    assert value(m, "fedsilo_http_requests_total", route=UPDATE_ROUTE, status="409") == 1
    assert value(m, "fedsilo_http_request_duration_seconds_count", route=UPDATE_ROUTE) == 3
    assert value(m, "fedsilo_db_statement_duration_seconds_count", operation="insert") > 5
    assert value(m, "fedsilo_db_statement_duration_seconds_count", operation="select") > 10
    assert value(m, "fedsilo_db_statement_duration_seconds_sum", operation="select") > 0

    # the ops port serves the same registry without credentials
    ops = scrape(httpx.get(fed.ops_url + "/metrics").text)
    assert value(ops, "fedsilo_rejections_total", reason="already_answered") == 1
    assert value(ops, "fedsilo_rounds_closed_total", status="aggregated") == 1
    assert httpx.get(fed.ops_url + "/readyz").json() == {"status": "ready"}
    assert httpx.get(fed.ops_url + "/healthz").status_code == 200
    assert httpx.get(fed.ops_url + "/v1/federations").status_code == 404  # nothing else


def test_metrics_on_the_api_port_need_the_metrics_token(fed: Fed) -> None:
    bare = httpx.get(fed.url + "/metrics")
    assert bare.status_code == 401 and "Bearer <metrics token>" in bare.json()["detail"]
    wrong = httpx.get(fed.url + "/metrics", headers={"Authorization": "Bearer test-admin-token"})
    assert wrong.status_code == 401  # a metrics token is set: the admin token is not it
    ok = httpx.get(fed.url + "/metrics", headers={"Authorization": "Bearer scrape-token"})
    assert ok.status_code == 200
    refused = scrape(ok.text)
    assert value(refused, "fedsilo_http_requests_total", route="/metrics", status="401") == 2


def test_without_a_metrics_token_the_admin_token_scrapes(tmp_path) -> None:  # type: ignore[no-untyped-def]
    with service_in_thread(tmp_path / "svc", f"sqlite:///{tmp_path}/s.db") as url:
        resp = httpx.get(url + "/metrics", headers={"Authorization": "Bearer test-admin-token"})
        assert resp.status_code == 200 and "fedsilo_http_requests_total" in resp.text
