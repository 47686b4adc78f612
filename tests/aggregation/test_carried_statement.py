"""A validation statement that rides on the silo's next POST to the run (`schemas.carried`):
recorded ahead of the answer it came with, kept when that answer is refused, refused itself
(naming the silo and the run) when it is not the silo's, and sent alone when the service does
not take it. Real service over HTTP, SQLite and PostgreSQL."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import numpy as np
import pytest
from support.live_service import coordinator, enrolled_silo, service_in_thread, started_run
from support.validation import summary

from flows.service_client import CoordinatorClient
from schemas import carried, tensors
from schemas.specs import ModelSpec, RunSpec, SecureAggregationSpec, param_shapes
from silos.client import SiloClient
from silos.client_errors import InvalidPayload
from silos.round_gate import statement_payload

MODEL = ModelSpec(kind="logreg", n_features=3)
SHAPES = param_shapes(MODEL)


@dataclass
class Fed:
    url: str
    coord: CoordinatorClient
    a: SiloClient
    run_id: str
    sent: list[tuple[str, str]]  # (method, path) of every request silo a made
    kept: list[dict[str, Any]]  # what its `on_receipt` was handed


@pytest.fixture
def fed(db_url: str, tmp_path: Path) -> Iterator[Fed]:
    spec = RunSpec(
        federation="f",
        dataset="toy",
        model=MODEL,
        rounds=2,
        min_silos=1,
        secure_aggregation=SecureAggregationSpec(enabled=False),
    )
    with service_in_thread(tmp_path / "svc", db_url) as url:
        coord = coordinator(url)
        coord.create_federation("f")
        a = enrolled_silo(url, coord, "f", "a")
        run_id = started_run(coord, spec)
        sent: list[tuple[str, str]] = []
        kept: list[dict[str, Any]] = []
        answered = a._answered

        def seen(resp: httpx.Response) -> None:
            sent.append((resp.request.method, resp.request.url.path))
            answered(resp)

        a._answered = seen  # type: ignore[method-assign]
        a.on_receipt = kept.append
        a.whoami()  # any answer says what the service takes along
        yield Fed(url, coord, a, run_id, sent, kept)


def _update(run_id: str, n: int) -> bytes:
    arrays = {name: np.full(s, 0.5, dtype="float32") for name, s in SHAPES}
    return tensors.encode(arrays, {"run_id": run_id, "round": "1", "n_examples": str(n)})


def _kinds(fed: Fed) -> list[str]:
    return [e.kind for e in fed.coord.ledger(fed.run_id) if e.author == "silo:a"]


def test_the_statement_rides_on_the_update_and_is_recorded_first(fed: Fed) -> None:
    assert fed.a.carries == {"validation_result"}
    payload = statement_payload("a", 1, summary(100))
    assert fed.a.carry_statement(fed.run_id, "validation_result", payload) is None
    assert _kinds(fed) == []  # held, not sent
    answer = fed.a.submit_update(fed.run_id, 1, _update(fed.run_id, 100))
    assert answer["receipt"] is not None
    assert _kinds(fed) == ["validation_result", "update_accepted"]
    assert not any(path.endswith("/statements") for _, path in fed.sent)
    [kept] = fed.kept  # the statement's receipt, with the statement as signed
    assert kept["statement"]["kind"] == "validation_result"
    assert json.loads(kept["statement"]["payload"]) == payload
    [entry] = [e for e in fed.coord.ledger(fed.run_id) if e.kind == "validation_result"]
    assert (
        kept["receipt"]["seq"] == entry.seq and kept["author_signature"] == entry.author_signature
    )


def test_a_refused_update_keeps_the_statement_it_carried(fed: Fed) -> None:
    fed.a.carry_statement(fed.run_id, "validation_result", statement_payload("a", 1, summary(100)))
    with pytest.raises(InvalidPayload, match="100 rows"):  # claims ten times its rows
        fed.a.submit_update(fed.run_id, 1, _update(fed.run_id, 1000))
    assert _kinds(fed) == ["validation_result"]
    assert len(fed.kept) == 1 and fed.kept[0]["receipt"] is not None  # on a refusal too
    fed.a.submit_update(fed.run_id, 1, _update(fed.run_id, 100))  # the statement counts
    assert _kinds(fed) == ["validation_result", "update_accepted"]


def test_a_statement_that_is_not_the_silos_is_refused_and_nothing_is_written(fed: Fed) -> None:
    payload = statement_payload("a", 1, summary(100))
    forged = carried.statement_header("validation_result", payload, "00" * 64)
    other = carried.statement_header(
        "validation_result", statement_payload("b", 1, summary(100)), "00" * 64
    )
    deep = base64.urlsafe_b64encode(b"[" * 2000 + b"]" * 2000).decode()  # was a 500
    path = f"/v1/silo/runs/{fed.run_id}/rounds/1/update"
    refusals = [(forged, "signature"), (other, "names silo 'b'"), ("%%", "base64")]
    for header, says in [*refusals, (deep, "nested too deeply")]:
        with pytest.raises(InvalidPayload) as err:
            fed.a.request(
                "POST", path, body=_update(fed.run_id, 100),
                extra_headers={carried.STATEMENT_HEADER: header},
            )  # fmt: skip
        assert "silo 'a'" in err.value.detail and fed.run_id in err.value.detail
        assert says in err.value.detail
    assert _kinds(fed) == []
    states = {s.silo: s.state for s in fed.coord.wait_round(fed.run_id, 1, 0).silos}
    assert states["a"] == "waiting"  # the update it came with was not stored


def test_a_service_that_does_not_record_it_gets_it_alone(
    fed: Fed, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the service reads the header under another name: an older one, which ignores it
    monkeypatch.setattr(
        "aggregation.service.deps.carried_wire", SimpleNamespace(STATEMENT_HEADER="X-Other")
    )
    fed.a.carry_statement(fed.run_id, "validation_result", statement_payload("a", 1, summary(100)))
    with pytest.raises(InvalidPayload, match="no validation statement"):
        fed.a.submit_update(fed.run_id, 1, _update(fed.run_id, 100))  # it came without one
    assert _kinds(fed) == ["validation_result"]  # then alone
    assert ("POST", f"/v1/silo/runs/{fed.run_id}/statements") in fed.sent
    assert [k["statement"]["kind"] for k in fed.kept] == ["validation_result"]


def test_without_the_services_word_it_goes_alone_at_once(fed: Fed) -> None:
    fed.a.carries = frozenset()
    answer = fed.a.carry_statement(
        fed.run_id, "validation_result", statement_payload("a", 1, summary(100))
    )
    assert answer is not None and answer["receipt"] is not None
    assert _kinds(fed) == ["validation_result"]


def test_a_held_statement_no_post_took_is_flushed_alone(fed: Fed) -> None:
    fed.a.carry_statement(fed.run_id, "validation_result", statement_payload("a", 1, summary(100)))
    fed.a.carry_statement(fed.run_id, "validation_result", statement_payload("a", 2, summary(100)))
    assert _kinds(fed) == ["validation_result"]  # the first went alone, ahead of the second
    fed.a.flush_held()
    rounds = [
        json.loads(e.payload)["round"] for e in fed.coord.ledger(fed.run_id) if e.author == "silo:a"
    ]
    assert rounds == [1, 2]
    assert len(fed.kept) == 2
