"""The wire at the hub over real HTTP: the version header both ways, refusals that name both
versions, and `ErrorOut` bodies whose `code` clients branch on."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import numpy as np
import pytest
from support.live_service import coordinator, enrolled_silo, service_in_thread
from support.validation import validate_all

from schemas import tensors
from schemas.specs import ModelSpec, RunSpec, SecureAggregationSpec, param_shapes
from schemas.wire import WIRE_HEADER, WIRE_VERSION, ErrorCode, ErrorOut, RoundOpen, RunCreate
from silos.client_errors import AlreadyAnswered, Conflict, WireVersionMismatch

TOKEN = {"Authorization": "Bearer test-admin-token"}
WIRE = {WIRE_HEADER: str(WIRE_VERSION)}


def initial(spec: RunSpec) -> bytes:
    return tensors.encode({n: np.zeros(s, np.float32) for n, s in param_shapes(spec.torch_model)})


def update(spec: RunSpec, run_id: str, seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    arrays = {n: rng.normal(size=s).astype(np.float32) for n, s in param_shapes(spec.torch_model)}
    return tensors.encode(arrays, {"run_id": run_id, "round": "1", "n_examples": "10"})


@pytest.fixture
def url(sqlite_url: str, tmp_path) -> Iterator[str]:  # type: ignore[no-untyped-def]
    with service_in_thread(tmp_path / "svc", sqlite_url) as base:
        yield base


def error(resp: httpx.Response) -> ErrorOut:
    assert resp.headers[WIRE_HEADER] == str(WIRE_VERSION)
    return ErrorOut.model_validate_json(resp.content)


@pytest.mark.parametrize(("sent", "named"), [(None, "1"), ("1", "'1'"), ("2", "'2'")])
def test_another_version_is_refused_naming_both(url: str, sent: str | None, named: str) -> None:
    headers = {**TOKEN, **({WIRE_HEADER: sent} if sent is not None else {})}
    resp = httpx.get(url + "/v1/federations", headers=headers)
    assert resp.status_code == 400
    body = error(resp)
    assert body.code == ErrorCode.wire_version and body.wire == WIRE_VERSION
    assert f"wire version {named}" in body.detail
    assert f"this service speaks wire version {WIRE_VERSION}" in body.detail


def test_healthz_needs_no_header_and_every_answer_carries_it(url: str) -> None:
    resp = httpx.get(url + "/healthz")
    assert resp.status_code == 200 and resp.headers[WIRE_HEADER] == str(WIRE_VERSION)
    ok = httpx.get(url + "/v1/federations", headers={**TOKEN, **WIRE})
    assert ok.status_code == 200 and ok.headers[WIRE_HEADER] == str(WIRE_VERSION)


def test_error_bodies_carry_their_code(url: str) -> None:
    cases = [
        (httpx.get(url + "/v1/runs/nope", headers={**TOKEN, **WIRE}), 404, "not_found"),
        (httpx.get(url + "/v1/runs", headers=WIRE), 401, "unauthorized"),
        (httpx.get(url + "/v1/no-such-route", headers=WIRE), 404, "not_found"),
        # FastAPI's own validation error, as an ErrorOut
        (
            httpx.post(url + "/v1/federations", headers={**TOKEN, **WIRE}, json={"name": 5}),
            422,
            "invalid_payload",
        ),
    ]
    for resp, status, code in cases:
        assert resp.status_code == status, resp.text
        body = error(resp)
        assert body.code == code and body.detail, body


def test_a_second_different_answer_is_already_answered(url: str) -> None:
    coord = coordinator(url)
    coord.create_federation("f")
    silos = {n: enrolled_silo(url, coord, "f", n) for n in ("a", "b")}
    spec = RunSpec(
        federation="f",
        dataset="toy",
        model=ModelSpec(kind="logreg", n_features=3),
        secure_aggregation=SecureAggregationSpec(enabled=False),
    )
    run = coord.create_run(RunCreate(spec=spec))
    coord.put_initial_model(run.run_id, initial(spec))
    coord.start_run(run.run_id)
    coord.open_round(run.run_id, RoundOpen(round=1, deadline_s=60))
    validate_all(silos, run.run_id)  # the gate's signed row counts bound n_examples
    a = silos["a"]
    a.submit_update(run.run_id, 1, update(spec, run.run_id, seed=1))
    with pytest.raises(AlreadyAnswered) as err:
        a.submit_update(run.run_id, 1, update(spec, run.run_id, seed=2))
    assert err.value.status == 409 and isinstance(err.value, Conflict)


def test_a_client_of_another_version_raises_a_typed_error(url: str) -> None:
    coord = coordinator(url)
    with pytest.raises(WireVersionMismatch):
        # what an old client would send
        coord.request("GET", "/v1/federations", extra_headers={WIRE_HEADER: "1"})
