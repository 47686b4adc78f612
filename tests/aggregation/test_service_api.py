"""The aggregation service over real HTTP on SQLite and PostgreSQL: rounds, auth, bad input
(out-of-range numbers: test_service_api_ranges.py).

One service per backend serves the module (`api_service_url`: its start and migrations are paid
once); each test gets a federation of its own in it (its own name, silos and run), so it sees
only its own federation's state. The test that reads the whole ledger has a service of its own.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from support.api_federation import (
    MAX_BODY_BYTES,
    SHAPES,
    WIRE,
    Fed,
    deltas,
    new_federation,
    payload,
    states,
)
from support.live_service import enrolled_silo, service_in_thread

from schemas import signing, tensors
from silos.client import SiloClient
from silos.client_errors import ServiceRejected


@pytest.fixture
def fed(api_service_url: str) -> Fed:
    return new_federation(api_service_url)


@pytest.fixture
def own_fed(db_url: str, tmp_path: Path) -> Iterator[Fed]:
    """A federation in a service of its own, for a test that reads the whole ledger."""
    with service_in_thread(tmp_path / "svc", db_url, max_body_bytes=MAX_BODY_BYTES) as url:
        yield new_federation(url, "f")


def test_round_aggregates_the_example_weighted_mean(fed: Fed) -> None:
    weights = {"a": 10, "b": 30, "c": 60}
    sent = {n: deltas(i) for i, n in enumerate(weights)}
    for name, client in fed.silos.items():
        task = client.next_task(wait_s=0)
        assert task is not None and task.type == "train" and task.round == 1
        client.submit_update(fed.run_id, 1, payload(sent[name], fed.run_id, 1, n=weights[name]))
    out = fed.coord.wait_round(fed.run_id, 1, wait_s=5)
    assert out.complete and all(s.state == "submitted" for s in out.silos)
    closed = fed.coord.close_round(fed.run_id, 1)
    assert closed.status == "aggregated" and closed.model_version == 1
    got, _ = tensors.decode_expected(fed.coord.download_model(fed.run_id, 1), SHAPES)
    for i, (w0, g) in enumerate(zip(fed.initial, got, strict=True)):
        ref = w0 + np.average([sent[n][i] for n in weights], axis=0, weights=list(weights.values()))
        np.testing.assert_allclose(g, ref, rtol=1e-5, atol=1e-6)
    assert fed.coord.close_round(fed.run_id, 1).model_sha256 == closed.model_sha256  # idempotent
    assert fed.silos["a"].next_task(wait_s=0) is None  # nothing open any more


def test_round_with_too_few_silos_fails_and_names_them(fed: Fed) -> None:
    fed.silos["a"].submit_update(fed.run_id, 1, payload(deltas(1), fed.run_id, 1))
    closed = fed.coord.close_round(fed.run_id, 1)
    assert closed.status == "failed"
    reason = closed.reason or ""
    assert "1 silos answered, min_silos is 2" in reason and "'a'" in reason


def test_resubmission_counts_once_and_a_different_one_is_refused(fed: Fed) -> None:
    body = payload(deltas(1), fed.run_id, 1)
    first = fed.silos["a"].submit_update(fed.run_id, 1, body)
    again = fed.silos["a"].submit_update(fed.run_id, 1, body)
    assert first["duplicate"] is False and again["duplicate"] is True
    with pytest.raises(ServiceRejected) as err:
        fed.silos["a"].submit_update(fed.run_id, 1, payload(deltas(2), fed.run_id, 1))
    assert err.value.status == 409 and "already answered round 1" in err.value.detail


def test_unknown_silo_is_401(fed: Fed) -> None:
    stranger = SiloClient(
        fed.url,
        federation=fed.federation,
        silo="mallory",
        key=Ed25519PrivateKey.generate(),
        retry_for_s=1,
    )
    with pytest.raises(ServiceRejected) as err:
        stranger.next_task(wait_s=0)
    assert err.value.status == 401 and "unknown silo 'mallory'" in err.value.detail


def test_bad_signature_is_401(fed: Fed) -> None:
    impostor = SiloClient(
        fed.url,
        federation=fed.federation,
        silo="a",
        key=Ed25519PrivateKey.generate(),
        retry_for_s=1,
    )
    with pytest.raises(ServiceRejected) as err:
        impostor.submit_update(fed.run_id, 1, payload(deltas(1), fed.run_id, 1))
    assert err.value.status == 401 and "bad signature from silo 'a'" in err.value.detail
    assert states(fed)["a"] == "waiting"


def test_replayed_request_is_401(fed: Fed) -> None:
    client = fed.silos["a"]
    path = "/v1/silo/tasks"
    headers = {**client._headers("GET", path, b""), **WIRE}
    first = httpx.get(fed.url + path, headers=headers)
    replay = httpx.get(fed.url + path, headers=headers)
    assert first.status_code == 200
    assert replay.status_code == 401 and "replayed request" in replay.json()["detail"]


def test_update_without_its_signed_statement_is_422(fed: Fed) -> None:
    client = fed.silos["a"]
    path = f"/v1/silo/runs/{fed.run_id}/rounds/1/update"
    body = payload(deltas(1), fed.run_id, 1)
    headers = {**client._headers("POST", path, body), **WIRE}
    resp = httpx.post(fed.url + path, content=body, headers=headers)
    assert resp.status_code == 422 and "signed ledger statement" in resp.json()["detail"]
    assert states(fed)["a"] == "waiting"


def test_stale_timestamp_is_401(fed: Fed) -> None:
    client = fed.silos["a"]
    path = "/v1/silo/tasks"
    old = (datetime.now(UTC) - timedelta(minutes=30)).isoformat()
    nonce = secrets.token_hex(8)
    msg = signing.request_message("GET", path, b"", old, nonce, fed.federation, "a")
    headers = {
        signing.HEADER_FEDERATION: fed.federation,
        signing.HEADER_SILO: "a",
        signing.HEADER_TIMESTAMP: old,
        signing.HEADER_NONCE: nonce,
        signing.HEADER_SIGNATURE: client.key.sign(msg).hex(),
        **WIRE,
    }
    resp = httpx.get(fed.url + path, headers=headers)
    assert resp.status_code == 401 and "off the service clock" in resp.json()["detail"]


def test_pending_silo_is_403(fed: Fed) -> None:
    pending = enrolled_silo(fed.url, fed.coord, fed.federation, "d", approve=False)
    with pytest.raises(ServiceRejected) as err:
        pending.next_task(wait_s=0)
    assert err.value.status == 403 and "awaits the coordinator's approval" in err.value.detail


def test_update_for_unknown_round_is_404(fed: Fed) -> None:
    with pytest.raises(ServiceRejected) as err:
        fed.silos["a"].submit_update(fed.run_id, 7, payload(deltas(1), fed.run_id, 7))
    assert err.value.status == 404 and "round 7" in err.value.detail


def test_update_for_closed_round_is_409_and_changes_nothing(fed: Fed) -> None:
    for name in ("a", "b"):
        fed.silos[name].submit_update(fed.run_id, 1, payload(deltas(1), fed.run_id, 1))
    closed = fed.coord.close_round(fed.run_id, 1)
    with pytest.raises(ServiceRejected) as err:
        fed.silos["c"].submit_update(fed.run_id, 1, payload(deltas(3), fed.run_id, 1))
    assert err.value.status == 409 and "aggregated" in err.value.detail
    after = fed.coord.wait_round(fed.run_id, 1, 0)
    assert after.model_sha256 == closed.model_sha256
    assert {s.silo: s.state for s in after.silos}["c"] == "waiting"


@pytest.mark.parametrize(
    ("arrays", "expected_fragment"),
    [
        ([np.zeros((1, 3), np.float32)], "expected 2 arrays"),
        ([np.zeros((1, 4), np.float32), np.zeros(1, np.float32)], "layers.0.weight[1, 4]"),
        ([np.zeros((1, 3), np.float64), np.zeros(1, np.float64)], "expected dtype float32"),
        ([np.full((1, 3), np.nan, np.float32), np.zeros(1, np.float32)], "NaN or infinite"),
        ([np.full((1, 3), np.inf, np.float32), np.zeros(1, np.float32)], "NaN or infinite"),
    ],
)
def test_malformed_update_is_422_naming_expected_and_received(
    fed: Fed, arrays, expected_fragment
) -> None:  # type: ignore[no-untyped-def]
    body = tensors.encode(
        {f"layers.0.{'weight' if i == 0 else 'bias'}": a for i, a in enumerate(arrays)},
        {"run_id": fed.run_id, "round": "1", "n_examples": "5"},
    )
    with pytest.raises(ServiceRejected) as err:
        fed.silos["a"].submit_update(fed.run_id, 1, body)
    assert err.value.status == 422 and expected_fragment in err.value.detail
    assert "silo 'a'" in err.value.detail
    assert states(fed)["a"] == "waiting"


def test_update_bound_to_another_round_is_422(fed: Fed) -> None:
    with pytest.raises(ServiceRejected) as err:
        fed.silos["a"].submit_update(fed.run_id, 1, payload(deltas(1), fed.run_id, 2))
    assert err.value.status == 422 and "bound to run" in err.value.detail


def test_not_a_tensor_payload_is_422(fed: Fed) -> None:
    with pytest.raises(ServiceRejected) as err:
        fed.silos["a"].submit_update(fed.run_id, 1, b"\x80\x04pickle-ish bytes")
    assert err.value.status == 422


def test_body_over_the_limit_is_413(fed: Fed) -> None:
    big = [np.zeros((1, 3), np.float32), np.zeros(1, np.float32)]
    body = payload(big, fed.run_id, 1, pad="x" * 70_000)
    with pytest.raises(ServiceRejected) as err:
        fed.silos["a"].submit_update(fed.run_id, 1, body)
    assert err.value.status == 413 and "exceeds the limit" in err.value.detail
    assert states(fed)["a"] == "waiting"


def test_refusal_stops_the_round_waiting_for_that_silo(fed: Fed) -> None:
    fed.silos["c"].refuse(fed.run_id, "policy forbids mlp")
    for name in ("a", "b"):
        fed.silos[name].submit_update(fed.run_id, 1, payload(deltas(1), fed.run_id, 1))
    out = fed.coord.wait_round(fed.run_id, 1, 2)
    assert out.complete
    assert {s.silo: (s.state, s.reason) for s in out.silos}["c"] == (
        "refused",
        "policy forbids mlp",
    )
    task = fed.silos["c"].next_task(wait_s=0, run_id=fed.run_id)
    assert task is not None and task.type == "run_ended"


def test_admin_endpoints_need_the_token(fed: Fed) -> None:
    resp = httpx.get(fed.url + "/v1/runs", headers={"Authorization": "Bearer wrong", **WIRE})
    assert resp.status_code == 401 and "admin token is wrong" in resp.json()["detail"]


def test_every_step_lands_in_a_verifiable_ledger(own_fed: Fed, tmp_path) -> None:  # type: ignore[no-untyped-def]
    fed = own_fed  # the whole ledger must be this federation's alone
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    from schemas.ledger_verify import directory_artifact_checker, verify_chain
    from schemas.lineage import verify_receipt

    answers = {}
    for i, (name, client) in enumerate(fed.silos.items()):
        answers[name] = client.submit_update(
            fed.run_id, 1, payload(deltas(i), fed.run_id, 1, n=5 + i)
        )
    for _ in range(3):  # rejected second updates are counted, not stored
        with pytest.raises(ServiceRejected):
            fed.silos["a"].submit_update(fed.run_id, 1, payload(deltas(9), fed.run_id, 1))
    assert "rejections" not in [e.kind for e in fed.coord.ledger()]  # nothing until it closes
    closed = fed.coord.close_round(fed.run_id, 1)
    entries = fed.coord.ledger()
    kinds = [e.kind for e in entries]
    assert kinds.count("silo_joined") == 3 and kinds.count("update_accepted") == 3
    assert {"run_started", "rejections", "aggregate", "model_saved"} <= set(kinds)
    assert "update_rejected" not in kinds and kinds.count("rejections") == 1
    summary = next(e for e in entries if e.kind == "rejections")
    assert '"count":3' in summary.payload.replace(" ", "")
    assert '"reason":"already_answered"' in summary.payload.replace(" ", "")
    accepted = [e for e in entries if e.kind == "update_accepted"]
    assert {e.author for e in accepted} == {"silo:a", "silo:b", "silo:c"}
    saved = [e for e in entries if e.kind == "model_saved"][-1]  # v0 first, then v1
    assert closed.model_sha256 and closed.model_sha256 in saved.payload
    keys = {
        k: Ed25519PublicKey.from_public_bytes(bytes.fromhex(v))
        for k, v in fed.coord.ledger_keys().items()
    }
    report = verify_chain(entries, keys, directory_artifact_checker(tmp_path / "svc"))
    assert report.ok, report
    from schemas.lineage import Receipt, Statement

    answer = answers["b"]
    receipt = Receipt.model_validate(answer["receipt"])
    verify_receipt(
        receipt,
        Statement.model_validate(answer["statement"]),
        answer["author_signature"],
        keys["service"],
    )
    entry = next(e for e in accepted if e.author == "silo:b")
    assert receipt.entry_hash == entry.entry_hash


def test_silo_sitting_out_is_shown_and_not_awaited(fed: Fed) -> None:
    fed.silos["a"].sit_out(fed.run_id, 1, "contract heart_disease v1 failed: expect_column(age)")
    fed.silos["a"].sit_out(fed.run_id, 1, "repeated request")  # idempotent
    for name in ("b", "c"):
        fed.silos[name].submit_update(fed.run_id, 1, payload(deltas(1), fed.run_id, 1))
    out = fed.coord.wait_round(fed.run_id, 1, 2)
    assert out.complete
    state = {s.silo: (s.state, s.reason) for s in out.silos}["a"]
    assert state == ("sat_out", "contract heart_disease v1 failed: expect_column(age)")
    assert fed.coord.close_round(fed.run_id, 1).status == "aggregated"


def test_too_many_silos_sitting_out_fail_the_round_naming_them(fed: Fed) -> None:
    fed.silos["a"].sit_out(fed.run_id, 1, "a: expect_column_values_to_be_between(chol)")
    fed.silos["b"].sit_out(fed.run_id, 1, "b: expect_table_row_count_to_be_between(table)")
    fed.silos["c"].submit_update(fed.run_id, 1, payload(deltas(1), fed.run_id, 1))
    out = fed.coord.close_round(fed.run_id, 1)
    assert out.status == "failed"
    assert "expect_column_values_to_be_between(chol)" in (out.reason or "")
    assert "expect_table_row_count_to_be_between(table)" in (out.reason or "")


def test_dates_carry_their_time_zone(fed: Fed) -> None:
    headers = {"Authorization": "Bearer test-admin-token", **WIRE}
    run = httpx.get(f"{fed.url}/v1/runs/{fed.run_id}", headers=headers).json()
    rnd = httpx.get(f"{fed.url}/v1/runs/{fed.run_id}/rounds/1", headers=headers).json()
    silos = httpx.get(f"{fed.url}/v1/federations/{fed.federation}/silos", headers=headers).json()
    feds = httpx.get(f"{fed.url}/v1/federations", headers=headers).json()
    stamps = [run["created_at"], rnd["opened_at"], rnd["deadline_at"]]
    stamps += [s["enrolled_at"] for s in silos] + [f["created_at"] for f in feds]
    for stamp in stamps:
        assert stamp.endswith(("+00:00", "Z")), stamp
        assert datetime.fromisoformat(stamp).utcoffset() == timedelta(0)
