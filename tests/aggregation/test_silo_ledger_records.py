"""``GET /v1/silo/ledger/records``: a silo gets back the ledger entries it authored, in seq
order, as the records of its copy of its lineage (statement, signature, the service's receipt),
paged and bounded, optionally of one run and kind; never another silo's."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from support.live_service import coordinator, enrolled_silo, service_in_thread, started_run

from flows.service_client import CoordinatorClient
from schemas.ledger_silo_copy import cross_check
from schemas.lineage import verify_receipt
from schemas.specs import ModelSpec, RunSpec, SecureAggregationSpec
from schemas.wire import MAX_SILO_RECORDS
from silos.client import SiloClient
from silos.client_errors import InvalidPayload

SPEC = RunSpec(
    federation="f",
    dataset="toy",
    model=ModelSpec(kind="logreg", n_features=3),
    rounds=2,
    min_silos=1,
    secure_aggregation=SecureAggregationSpec(enabled=False),
)


@dataclass
class Fed:
    url: str
    coord: CoordinatorClient
    a: SiloClient
    b: SiloClient
    run_id: str


@pytest.fixture
def fed(db_url: str, tmp_path: Path) -> Iterator[Fed]:
    with service_in_thread(tmp_path / "svc", db_url) as url:
        coord = coordinator(url)
        coord.create_federation("f")
        a = enrolled_silo(url, coord, "f", "a")
        b = enrolled_silo(url, coord, "f", "b")
        yield Fed(url, coord, a, b, started_run(coord, SPEC))


def _state(fed: Fed, silo: SiloClient, round_: int) -> dict[str, object]:
    payload = {"silo": silo.silo, "round": round_, "epsilon": 0.5, "delta": 1e-5}
    return silo.submit_statement(fed.run_id, "privacy_spent", payload)


def test_a_silo_gets_its_own_entries_with_receipts_that_verify(fed: Fed) -> None:
    answers = [_state(fed, fed.a, r) for r in (1, 2)]
    _state(fed, fed.b, 1)  # another silo's entry: never handed to a
    page = fed.a.own_records()
    assert [r.receipt.seq for r in page.records] == [a["receipt"]["seq"] for a in answers]  # type: ignore[index]
    assert {r.statement.author for r in page.records} == {"silo:a"}
    assert page.next_after is None
    key = Ed25519PublicKey.from_public_bytes(bytes.fromhex(page.service_key))
    for record in page.records:
        verify_receipt(record.receipt, record.statement, record.author_signature, key)
    # what `lineage verify --silo-copy` checks: the records match the service's ledger
    report = cross_check(page.records, fed.coord.ledger(), service_public_key=key)
    assert report.ok and report.checked == 2, str(report)


def test_pages_and_filters(fed: Fed) -> None:
    for r in (1, 2, 3):
        _state(fed, fed.a, r)
    first = fed.a.own_records(limit=2)
    assert len(first.records) == 2 and first.next_after == first.records[-1].receipt.seq
    rest = fed.a.own_records(after=first.next_after or 0, limit=2)
    assert len(rest.records) == 1 and rest.next_after is None
    assert fed.a.own_records(kind="update_accepted").records == []
    assert len(fed.a.own_records(run_id=fed.run_id, kind="privacy_spent").records) == 3
    assert fed.a.own_records(run_id="other-run").records == []


def test_the_page_size_is_bounded_and_the_route_needs_a_signed_request(fed: Fed) -> None:
    with pytest.raises(InvalidPayload):
        fed.a.own_records(limit=MAX_SILO_RECORDS + 1)
    unsigned = httpx.get(fed.url + "/v1/silo/ledger/records")
    assert 400 <= unsigned.status_code < 500 and "records" not in unsigned.text
