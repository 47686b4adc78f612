"""A hub restored from a backup taken while a secure round was open mid-protocol: the round
starts its protocol again at advertise, every silo takes part with new keys and masks (one that
still holds the old instance's state too), and the round sums exactly what it should.

The silos go on past the backup, as real ones do: two unmask (and so erase the round's keys
and seeds), the third sent its masked update and still holds its state. Before the fix the
restored round carried on at its saved stage and asked the silos for messages built from state
they had erased (`[Errno 2] No such file or directory: .../secagg/<run>-r1.state`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from support.live_service import coordinator, service_in_thread, silo_key
from support.validation import validate_all

from aggregation.backup import backup, restore, verify_ledger
from aggregation.service.settings import ServiceSettings
from schemas import tensors
from schemas.specs import ModelSpec, RunSpec, SecureAggregationSpec, param_shapes
from schemas.wire import Metrics, RoundOpen, RunCreate
from silos import secure_round
from silos.client import SiloClient
from silos.client_errors import AlreadyAnswered

MODEL = ModelSpec(kind="logreg", n_features=4)
SHAPES = param_shapes(MODEL)
DIM = sum(int(np.prod(s)) for _, s in SHAPES)
METRICS = Metrics(n_test=10, loss=0.5, accuracy=0.8, auc=0.9).model_dump_json()
NAMES = ("a", "b", "c")
N = {"a": 10, "b": 30, "c": 60}


def _task(client: SiloClient, expected: str):  # type: ignore[no-untyped-def]
    task = client.next_task(wait_s=2)
    assert task is not None and task.type == expected, task
    return task


def _clients(url: str) -> dict[str, SiloClient]:
    return {
        n: SiloClient(url, federation="f", silo=n, key=silo_key(n), retry_for_s=5) for n in NAMES
    }


def _advertise(silos: dict[str, SiloClient], ws: Path) -> None:
    for name, client in silos.items():
        task = _task(client, "secagg_advertise")
        secure_round.advertise(client, client.key, task, ws / name, n_examples=N[name])


def _share(silos: dict[str, SiloClient], ws: Path) -> None:
    for name, client in silos.items():
        secure_round.share(client, client.key, _task(client, "secagg_share"), ws / name)


def _masked(client: SiloClient, ws: Path, run_id: str, delta: np.ndarray) -> None:
    task = _task(client, "secagg_masked")
    message = secure_round.masked_update(
        client, client.key, task, ws / client.silo, task.secagg.weight * delta
    )
    client.submit_masked(run_id, 1, message, N[client.silo], 0.01, METRICS)


def _unmask(client: SiloClient, ws: Path) -> None:
    secure_round.unmask(client, client.key, _task(client, "secagg_unmask"), ws / client.silo)


def _round_files(ws: Path, name: str) -> list[str]:
    folder = ws / name / secure_round.STATE_DIR
    return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


def test_a_restored_open_secure_round_restarts_its_protocol_and_sums_exactly(
    tmp_path: Path,
) -> None:
    spec = RunSpec(
        federation="f",
        dataset="toy",
        model=MODEL,
        rounds=2,
        min_silos=2,
        secure_aggregation=SecureAggregationSpec(clip=5.0, threshold=2),
    )
    hub, ws = tmp_path / "hub", tmp_path / "silo-ws"
    rng = np.random.default_rng(1)
    deltas = {name: rng.normal(scale=0.3, size=DIM) for name in NAMES}
    with service_in_thread(hub, "") as url:
        coord = coordinator(url)
        coord.create_federation("f")
        silos = _clients(url)
        for client in silos.values():
            client.enrol()
            coord.approve("f", client.silo)
        run_id = coord.create_run(RunCreate(spec=spec)).run_id
        initial = np.random.default_rng(0).normal(size=DIM).astype(np.float32)
        arrays, start = {}, 0
        for name, shape in SHAPES:
            size = int(np.prod(shape))
            arrays[name] = initial[start : start + size].reshape(shape)
            start += size
        coord.put_initial_model(run_id, tensors.encode(arrays))
        coord.start_run(run_id)
        coord.open_round(run_id, RoundOpen(round=1, deadline_s=60))
        validate_all(silos, run_id)
        _advertise(silos, ws)
        _share(silos, ws)
        _masked(silos["a"], ws, run_id, deltas["a"])
        _masked(silos["b"], ws, run_id, deltas["b"])
        # the backup: round 1 open at the masked stage, two masked updates in
        settings = ServiceSettings(workspace=hub, database_url="")
        manifest = backup(settings, tmp_path / "bk")
        # the hub runs on: c masks, a and b unmask (their round state is erased), c does not
        _masked(silos["c"], ws, run_id, deltas["c"])
        _unmask(silos["a"], ws)
        _unmask(silos["b"], ws)
        assert _round_files(ws, "a") == [] and _round_files(ws, "b") == []
        kept = _round_files(ws, "c")
        assert f"{run_id}-r1.masked.msg" in kept, kept
        old_advert = (ws / "c" / "secagg" / f"{run_id}-r1.advertise.msg").read_bytes()
        old_masked = (ws / "c" / "secagg" / f"{run_id}-r1.masked.msg").read_bytes()
    # the hub is lost; restored into a new workspace
    restored = ServiceSettings(workspace=tmp_path / "hub2", database_url="")
    notes: list[str] = []
    report = restore(restored, tmp_path / "bk", notes=notes)
    assert report.ok and report.head_seq == manifest["ledger_head"]["seq"]
    assert len(notes) == 1 and "stage masked" in notes[0] and "advertise" in notes[0], notes
    with service_in_thread(restored.workspace, "") as url:
        coord = coordinator(url)
        silos = _clients(url)
        out = coord.wait_round(run_id, 1, wait_s=1)
        assert out.status == "open" and out.secagg_stage == "advertise", out
        # c's masked update of the earlier start, in flight across the restore (a retry): it
        # is dropped, and c told so as "already answered", not refused (c would decline)
        with pytest.raises(AlreadyAnswered, match="started again at advertise"):
            silos["c"].submit_masked(run_id, 1, old_masked, N["c"], 0.01, METRICS)
        _advertise(silos, ws)  # c too: it erases what it held of the round, makes new keys
        assert (ws / "c" / "secagg" / f"{run_id}-r1.advertise.msg").read_bytes() != old_advert
        assert not (ws / "c" / "secagg" / f"{run_id}-r1.masked.msg").exists()
        _share(silos, ws)
        for name in NAMES:
            _masked(silos[name], ws, run_id, deltas[name])
        for name in NAMES:
            _unmask(silos[name], ws)
        out = coord.wait_round(run_id, 1, wait_s=5)
        assert out.status == "aggregated", out
        payload = coord.download_model(run_id, 1)
        model = np.concatenate([a.ravel() for a in tensors.decode_expected(payload, SHAPES)[0]])
        expected = initial + sum(N[k] * deltas[k] for k in NAMES) / sum(N.values())
        np.testing.assert_allclose(model, expected, atol=1e-6)
    assert verify_ledger(restored).ok
