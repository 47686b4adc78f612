"""The aggregation service over real HTTP on SQLite and PostgreSQL: rounds, auth, bad input."""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import httpx
import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from support.live_service import coordinator, enrolled_silo, service_in_thread
from support.validation import validate_all

from flows.service_client import CoordinatorClient
from schemas import signing, tensors
from schemas.specs import ModelSpec, RunSpec, SecureAggregationSpec, param_shapes
from schemas.wire import WIRE_HEADER, WIRE_VERSION, RoundOpen, RunCreate
from silos.client import SiloClient
from silos.client_errors import ServiceRejected

SPEC = RunSpec(
    federation="f",
    dataset="toy",
    model=ModelSpec(kind="logreg", n_features=3),
    rounds=3,
    min_silos=2,
    secure_aggregation=SecureAggregationSpec(enabled=False),
)
SHAPES = param_shapes(SPEC.model)
NAMES = [n for n, _ in SHAPES]
WIRE = {WIRE_HEADER: str(WIRE_VERSION)}  # raw requests speak the wire version too


def payload(arrays: list[np.ndarray], run_id: str, round_: int, n: int = 10, **meta: str) -> bytes:
    md = {"run_id": run_id, "round": str(round_), "n_examples": str(n), **meta}
    return tensors.encode(dict(zip(NAMES, arrays, strict=True)), md)


def deltas(seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.normal(size=s).astype(np.float32) for _, s in SHAPES]


@dataclass
class Fed:
    url: str
    coord: CoordinatorClient
    silos: dict[str, SiloClient]
    run_id: str
    initial: list[np.ndarray]


@pytest.fixture
def fed(db_url: str, tmp_path) -> Fed:  # type: ignore[no-untyped-def]
    with service_in_thread(tmp_path / "svc", db_url, max_body_bytes=64 * 1024) as url:
        coord = coordinator(url)
        coord.create_federation("f")
        silos = {n: enrolled_silo(url, coord, "f", n) for n in ("a", "b", "c")}
        run = coord.create_run(RunCreate(spec=SPEC))
        initial = deltas(99)
        coord.put_initial_model(run.run_id, tensors.encode(dict(zip(NAMES, initial, strict=True))))
        coord.start_run(run.run_id)
        coord.open_round(run.run_id, RoundOpen(round=1, deadline_s=60))
        validate_all(silos, run.run_id)  # the gate's signed row counts bound n_examples
        yield Fed(url, coord, silos, run.run_id, initial)


def states(fed: Fed, round_: int = 1) -> dict[str, str]:
    return {s.silo: s.state for s in fed.coord.wait_round(fed.run_id, round_, 0).silos}


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
    assert "1 silos answered, min_silos is 2" in (closed.reason or "") and "'a'" in closed.reason


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
        fed.url, federation="f", silo="mallory", key=Ed25519PrivateKey.generate(), retry_for_s=1
    )
    with pytest.raises(ServiceRejected) as err:
        stranger.next_task(wait_s=0)
    assert err.value.status == 401 and "unknown silo 'mallory'" in err.value.detail


def test_bad_signature_is_401(fed: Fed) -> None:
    impostor = SiloClient(
        fed.url, federation="f", silo="a", key=Ed25519PrivateKey.generate(), retry_for_s=1
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
    msg = signing.request_message("GET", path, b"", old, nonce, "f", "a")
    headers = {
        signing.HEADER_FEDERATION: "f",
        signing.HEADER_SILO: "a",
        signing.HEADER_TIMESTAMP: old,
        signing.HEADER_NONCE: nonce,
        signing.HEADER_SIGNATURE: client.key.sign(msg).hex(),
        **WIRE,
    }
    resp = httpx.get(fed.url + path, headers=headers)
    assert resp.status_code == 401 and "off the service clock" in resp.json()["detail"]


def test_pending_silo_is_403(fed: Fed) -> None:
    pending = enrolled_silo(fed.url, fed.coord, "f", "d", approve=False)
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


def test_every_step_lands_in_a_verifiable_ledger(fed: Fed, tmp_path) -> None:  # type: ignore[no-untyped-def]
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
    assert closed.model_sha256 in saved.payload
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


def test_dates_carry_their_time_zone(fed: Fed) -> None:
    headers = {"Authorization": "Bearer test-admin-token", **WIRE}
    run = httpx.get(f"{fed.url}/v1/runs/{fed.run_id}", headers=headers).json()
    rnd = httpx.get(f"{fed.url}/v1/runs/{fed.run_id}/rounds/1", headers=headers).json()
    silos = httpx.get(f"{fed.url}/v1/federations/f/silos", headers=headers).json()
    feds = httpx.get(f"{fed.url}/v1/federations", headers=headers).json()
    stamps = [run["created_at"], rnd["opened_at"], rnd["deadline_at"]]
    stamps += [s["enrolled_at"] for s in silos] + [f["created_at"] for f in feds]
    for stamp in stamps:
        assert stamp.endswith(("+00:00", "Z")), stamp
        assert datetime.fromisoformat(stamp).utcoffset() == timedelta(0)
