"""A silo's claimed ``n_examples`` (its FedAvg weight) is bounded by the rows of its latest
signed validation statement in the run: plain updates, secure-aggregation adverts and masked
updates, over HTTP against the real service."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from support.live_service import coordinator, enrolled_silo, service_in_thread
from support.validation import summary, validate

from flows.service_client import CoordinatorClient
from schemas import tensors
from schemas.specs import ModelSpec, RunSpec, SecureAggregationSpec, param_shapes
from schemas.wire import RoundOpen, RunCreate
from silos import secure_round
from silos.client import SiloClient
from silos.client_errors import InvalidPayload
from silos.round_gate import statement_payload

MODEL = ModelSpec(kind="logreg", n_features=3)
SHAPES = param_shapes(MODEL)
NAMES = [n for n, _ in SHAPES]
ROWS = {"a": 100, "b": 300, "c": 600}


@dataclass
class Fed:
    coord: CoordinatorClient
    silos: dict[str, SiloClient]
    run_id: str
    initial: list[np.ndarray]


def _deltas(seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.normal(size=s).astype(np.float32) for _, s in SHAPES]


def _payload(arrays: list[np.ndarray], run_id: str, n: int) -> bytes:
    meta = {"run_id": run_id, "round": "1", "n_examples": str(n)}
    return tensors.encode(dict(zip(NAMES, arrays, strict=True)), meta)


def _federation(db_url: str, tmp_path: Path, secure: bool) -> Iterator[Fed]:
    spec = RunSpec(
        federation="f",
        dataset="toy",
        model=MODEL,
        rounds=2,
        min_silos=2,
        secure_aggregation=SecureAggregationSpec(enabled=secure, clip=5.0, threshold=2),
    )
    with service_in_thread(tmp_path / "svc", db_url) as url:
        coord = coordinator(url)
        coord.create_federation("f")
        silos = {n: enrolled_silo(url, coord, "f", n) for n in ROWS}
        run = coord.create_run(RunCreate(spec=spec))
        initial = _deltas(99)
        coord.put_initial_model(run.run_id, tensors.encode(dict(zip(NAMES, initial, strict=True))))
        coord.start_run(run.run_id)
        coord.open_round(run.run_id, RoundOpen(round=1, deadline_s=60))
        yield Fed(coord, silos, run.run_id, initial)


@pytest.fixture
def plain(db_url: str, tmp_path: Path) -> Iterator[Fed]:
    yield from _federation(db_url, tmp_path, secure=False)


@pytest.fixture
def secure(db_url: str, tmp_path: Path) -> Iterator[Fed]:
    yield from _federation(db_url, tmp_path, secure=True)


def _model(fed: Fed) -> list[np.ndarray]:
    return tensors.decode_expected(fed.coord.download_model(fed.run_id, 1), SHAPES)[0]


def test_plain_update_claiming_ten_times_its_rows_is_refused(plain: Fed) -> None:
    fed = plain
    sent = {n: _deltas(i) for i, n in enumerate(ROWS)}
    for name, client in fed.silos.items():
        validate(client, fed.run_id, n_rows=ROWS[name])
    with pytest.raises(InvalidPayload) as err:
        fed.silos["a"].submit_update(fed.run_id, 1, _payload(sent["a"], fed.run_id, 1000))
    detail = err.value.detail
    assert "'a'" in detail and "round 1" in detail and "1000" in detail and "100 rows" in detail
    states = {s.silo: s.state for s in fed.coord.wait_round(fed.run_id, 1, 0).silos}
    assert states["a"] == "waiting"  # the refusal stored nothing
    for name in ("b", "c"):
        fed.silos[name].submit_update(fed.run_id, 1, _payload(sent[name], fed.run_id, ROWS[name]))
    assert fed.coord.close_round(fed.run_id, 1).status == "aggregated"
    weights = [ROWS["b"], ROWS["c"]]
    for i, (w0, got) in enumerate(zip(fed.initial, _model(fed), strict=True)):
        ref = w0 + np.average([sent["b"][i], sent["c"][i]], axis=0, weights=weights)
        np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-6)


def test_update_up_to_the_validated_rows_is_accepted(plain: Fed) -> None:
    fed = plain
    a = fed.silos["a"]
    validate(a, fed.run_id, n_rows=100)
    answer = a.submit_update(fed.run_id, 1, _payload(_deltas(1), fed.run_id, 100))
    assert answer["receipt"] is not None


def test_update_without_a_validation_statement_is_refused(plain: Fed) -> None:
    with pytest.raises(InvalidPayload) as err:
        plain.silos["a"].submit_update(plain.run_id, 1, _payload(_deltas(1), plain.run_id, 5))
    assert "no validation statement" in err.value.detail


def test_update_after_a_failed_validation_is_refused(plain: Fed) -> None:
    a = plain.silos["a"]
    validate(a, plain.run_id, n_rows=100)
    failed = statement_payload("a", 1, summary(100, success=False))
    a.submit_statement(plain.run_id, "validation_result", failed)  # the latest one counts
    with pytest.raises(InvalidPayload) as err:
        a.submit_update(plain.run_id, 1, _payload(_deltas(1), plain.run_id, 5))
    assert "failed" in err.value.detail


def test_secure_advert_and_masked_update_are_bounded(secure: Fed, tmp_path: Path) -> None:
    fed, ws = secure, tmp_path / "silo-ws"
    for name, client in fed.silos.items():
        validate(client, fed.run_id, n_rows=ROWS[name])
    a = fed.silos["a"]
    task = a.next_task(wait_s=2)
    assert task is not None and task.type == "secagg_advertise"
    with pytest.raises(InvalidPayload) as err:  # the advertised weight is the FedAvg weight
        secure_round.advertise(a, a.key, task, ws / "a", n_examples=10 * ROWS["a"])
    assert "advertise from silo 'a'" in err.value.detail and "1000" in err.value.detail
    for leftover in (ws / "a" / "secagg").iterdir():
        leftover.unlink()  # the refused advert is not the one this silo stands by
    for name, client in fed.silos.items():
        work = client.next_task(wait_s=2)
        assert work is not None and work.type == "secagg_advertise"
        secure_round.advertise(client, client.key, work, ws / name, n_examples=ROWS[name])
    for name, client in fed.silos.items():
        work = client.next_task(wait_s=2)
        assert work is not None
        secure_round.share(client, client.key, work, ws / name)
    work = a.next_task(wait_s=2)
    assert work is not None and work.type == "secagg_masked" and work.secagg.weight is not None
    dim = sum(int(np.prod(s)) for _, s in SHAPES)
    message = secure_round.masked_update(a, a.key, work, ws / "a", np.zeros(dim))
    with pytest.raises(InvalidPayload) as err:
        a.submit_masked(fed.run_id, 1, message, 10 * ROWS["a"], 0.01, None)
    assert "masked update from silo 'a'" in err.value.detail
    assert a.submit_masked(fed.run_id, 1, message, ROWS["a"], 0.01, None)["receipt"] is not None
