"""Vertical SecureBoost through the product's parts: the service relays sealed envelopes
between two party processes (`python -m silos.vertical.agent_role`) on 127.0.0.1.

Checks: the joint model's predictions equal the in-process `secureboost` model's on the same
data; the relay stored only sealed frames (no message in the clear); the ledger holds the
intersection's hash from both parties and every tree's lineage without thresholds or bins; a
tampered envelope is refused by its recipient naming the sender, and the run fails saying so;
an envelope whose header names another sender is refused by the relay.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa
from support.live_service import coordinator, service_in_thread
from support.vertical_data import PARAMS, cols, lr_reference, reference, tables

from flows.service_client import CoordinatorClient
from flows.vertical import create_vertical_run, vertical_run, wait_vertical
from schemas.vertical import (
    Features,
    RunFailed,
    Sealed,
    VerticalParams,
    VerticalRunOut,
    frame,
    unframe,
)
from silos.client import SiloClient
from silos.client_errors import ServiceRejected
from silos.keys import load_or_create_key
from silos.vertical import psi
from silos.vertical.agent_role import load_party_data, report
from silos.vertical.channel import ChannelError
from silos.vertical.http_wire import HttpWire, open_channel
from silos.vertical.logreg import LrParams

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]
ROOT = Path(__file__).resolve().parents[2]
# the run's hyperparameters, which the party processes take from the service (not flags)
SB = VerticalParams(trees=PARAMS.n_trees, depth=PARAMS.max_depth, bins=PARAMS.n_bins)


def party_proc(
    url: str, fed: str, silo: str, key: Path, run: str, data: Path, out: Path, label: str | None
) -> subprocess.Popen[bytes]:
    cmd = [
        sys.executable,
        "-m",
        "silos.vertical.agent_role",
        "--service",
        url,
        "--federation",
        fed,
        "--silo",
        silo,
        "--key",
        str(key),
        "--run",
        run,
        "--data",
        str(data),
        "--out",
        str(out),
        "--predict-data",
        str(data.with_name(data.stem + "-new.csv")),
    ]
    if label:
        cmd += ["--label", label]
    return subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


Fed = tuple[str, CoordinatorClient, dict[str, SiloClient], sa.Engine]


@pytest.fixture
def fed(tmp_path: Path, db_url: str) -> Iterator[Fed]:
    # audit mode: the relay keeps every envelope, so the test can read them all afterwards
    with service_in_thread(
        tmp_path / "ws", db_url, poll_interval_s=0.05, vertical_keep_envelopes=True
    ) as url:
        coord = coordinator(url)
        coord.create_federation("vert")
        clients = {}
        for name in ("bank", "bureau"):
            key = tmp_path / f"{name}.key"
            clients[name] = SiloClient(
                url, federation="vert", silo=name, key=load_or_create_key(key), retry_for_s=10
            )
            clients[name].enrol()
            coord.approve("vert", name)
        engine = sa.create_engine(db_url)
        try:
            yield url, coord, clients, engine
        finally:
            engine.dispose()


def envelopes(engine: sa.Engine, run: str) -> list[tuple[int, str, str, bytes]]:
    with engine.connect() as c:
        return list(
            c.execute(
                sa.text(
                    "SELECT id, sender, recipient, frame FROM vertical_envelopes WHERE run_id = :r "
                    "ORDER BY id"
                ),
                {"r": run},
            )
        )


def both_parties(
    url: str,
    coord: CoordinatorClient,
    tmp_path: Path,
    run: str,
    paths: dict[str, Path],
    total: int,
) -> tuple[VerticalRunOut, list[str]]:
    """The bank's and the bureau's role processes through training run `run`, which must
    finish; the run at its end and the coordinator's progress lines."""
    procs = {
        name: party_proc(
            url,
            "vert",
            name,
            tmp_path / f"{name}.key",
            run,
            paths[name],
            tmp_path / f"out-{name}",
            "y" if name == "bank" else None,
        )
        for name in ("bank", "bureau")
    }
    lines: list[str] = []
    done = wait_vertical(coord, run, total, 600, lines.append)
    logs = {n: p.communicate(timeout=120)[0].decode() for n, p in procs.items()}
    assert done.status == "finished", (done.reason, logs)
    assert all(p.returncode == 0 for p in procs.values()), logs
    return done, lines


def test_joint_model_equals_in_process_and_relay_sees_ciphertext(tmp_path: Path, fed: Fed) -> None:
    url, coord, clients, engine = fed
    paths = tables(tmp_path)
    run = create_vertical_run(coord, "vert", "bank", ["bank", "bureau"], SB)
    done, lines = both_parties(url, coord, tmp_path, run.run_id, paths, PARAMS.n_trees)
    assert any("trees 1/2" in line for line in lines) or done.trees == 2

    expected, ref_trees, expected_new = reference(paths)
    got = np.load(tmp_path / "out-bank" / "predictions.npy")
    np.testing.assert_array_equal(got, expected)
    # joint inference on new customers, aligned by a second PSI over the same channel
    got_new = pd.read_csv(tmp_path / "out-bank" / "predict.csv", dtype={"id": str})
    assert len(got_new) == 55
    assert got_new["id"].tolist() == expected_new["id"].tolist()
    np.testing.assert_allclose(got_new["proba"], expected_new["proba"], rtol=0, atol=1e-15)

    # the relay held sealed frames only: valid headers, no message JSON in any body
    stored = envelopes(engine, run.run_id)
    assert len(stored) > 10
    plain = Features(run=run.run_id, sender="bureau", count=4).model_dump_json().encode()
    assert b'"kind":' in plain  # what an unsealed message would carry
    kinds = (b'"kind":', b"gradients", b"psi_points", b"ciphertexts", b"histogram")
    for _, sender, recipient, data in stored:
        sealed = unframe(data)
        assert (sealed.sender, sealed.recipient) == (sender, recipient)
        assert not any(k in sealed.body for k in kinds)

    # the ledger: both parties' intersection hash, each tree's lineage without thresholds
    entries = coord.ledger(run.run_id)
    by_kind: dict[str, list[dict]] = {}
    for e in entries:
        by_kind.setdefault(e.kind, []).append(json.loads(e.payload))
    bank = load_party_data(paths["bank"], "id", "y")
    bureau = load_party_data(paths["bureau"], "id", None)
    common = sorted(set(bank.ids) & set(bureau.ids))
    salt = hashlib.sha256(b"fedsilo psi salt|" + run.run_id.encode()).digest()
    assert {p["party"] for p in by_kind["vertical_psi"]} == {"bank", "bureau"}
    assert {p["digest"] for p in by_kind["vertical_psi"]} == {psi.intersection_digest(common, salt)}
    assert [p["tree"] for p in by_kind["vertical_tree"]] == [0, 1]
    for t, payload in enumerate(by_kind["vertical_tree"]):
        want = {k: n.owner for k, n in ref_trees[t].nodes.items() if not n.is_leaf}
        assert {n["node"]: n["party"] for n in payload["nodes"]} == want
        assert all(set(n) == {"node", "party", "depth"} for n in payload["nodes"])
    model = (tmp_path / "out-bank" / "model-active.json").read_bytes()
    assert by_kind["vertical_finished"][0]["model_digest"] == hashlib.sha256(model).hexdigest()
    assert vertical_run(coord, run.run_id).model_digest == hashlib.sha256(model).hexdigest()

    # later, a prediction run: each party loads its own half, PSI aligns, routes are joint
    predict_again(url, coord, tmp_path, run.run_id, paths, model, expected_new)


def predict_again(
    url: str,
    coord: CoordinatorClient,
    tmp_path: Path,
    model_run: str,
    paths: dict[str, Path],
    model: bytes,
    expected: pd.DataFrame,
) -> None:
    """A prediction run with the halves each party kept from `model_run` (`predict_role`
    processes on the new customers): it states the active half's digest and predicts
    `expected` again."""
    pred = create_vertical_run(coord, "vert", "bank", ["bank", "bureau"], model_run=model_run)
    contracts = {
        "bank": 'id_column = "id"\nlabel = "y"\n' + cols("b", 3),
        "bureau": 'id_column = "id"\n' + cols("u", 4),
    }
    procs = {}
    for name, text in contracts.items():
        (tmp_path / f"{name}.toml").write_text(f'name = "{name}"\nversion = "1"\n{text}')
        cmd = [sys.executable, "-m", "silos.vertical.predict_role", "--service", url]
        cmd += ["--federation", "vert", "--silo", name, "--key", str(tmp_path / f"{name}.key")]
        cmd += ["--run", pred.run_id, "--contract", str(tmp_path / f"{name}.toml")]
        cmd += ["--data", str(paths[f"{name}-new"]), "--model", str(tmp_path / f"out-{name}")]
        procs[name] = subprocess.Popen(
            cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )
    done = wait_vertical(coord, pred.run_id, 0, 300, lambda line: None)
    logs = {n: p.communicate(timeout=120)[0].decode() for n, p in procs.items()}
    assert done.status == "finished" and done.psi_size == 55, (done.reason, logs)
    assert done.model_digest == hashlib.sha256(model).hexdigest()
    again = pd.read_csv(tmp_path / "out-bank" / f"predict-{pred.run_id}.csv", dtype={"id": str})
    assert again["id"].tolist() == expected["id"].tolist()
    np.testing.assert_allclose(again["proba"], expected["proba"], rtol=0, atol=1e-15)


def test_logistic_regression_through_the_relay_equals_in_process(tmp_path: Path, fed: Fed) -> None:
    url, coord, clients, engine = fed
    paths = tables(tmp_path)
    params = VerticalParams(model="logreg", epochs=2, batch_rows=64, learning_rate=0.5)
    run = create_vertical_run(coord, "vert", "bank", ["bank", "bureau"], params)
    done, lines = both_parties(url, coord, tmp_path, run.run_id, paths, params.epochs)
    assert (done.epochs, done.trees) == (2, 0)
    assert any("epochs 1/2" in line for line in lines) or done.epochs == 2

    # each party keeps its own half: the bank its 3 weights and the intercept, the bureau 4
    halves = {
        n: json.loads((tmp_path / f"out-{n}" / f"model-{r}.json").read_text())
        for n, r in (("bank", "active"), ("bureau", "passive"))
    }
    assert [len(halves[n]["weights"]) for n in ("bank", "bureau")] == [4, 4]
    assert {h["model"] for h in halves.values()} == {"logreg"}
    assert "initial_weights" not in halves["bureau"]  # the bank's start stays at the bank

    # the same weights as in one process from the bank's starting weights: identical
    # predictions, aligned and new customers
    start = halves["bank"]["initial_weights"]
    expected, expected_new = lr_reference(paths, LrParams(epochs=2, batch_rows=64), start)
    np.testing.assert_array_equal(np.load(tmp_path / "out-bank" / "predictions.npy"), expected)
    got_new = pd.read_csv(tmp_path / "out-bank" / "predict.csv", dtype={"id": str})
    assert got_new["id"].tolist() == expected_new["id"].tolist()
    np.testing.assert_allclose(got_new["proba"], expected_new["proba"], rtol=0, atol=1e-15)

    # the relay held sealed frames only
    for *_, data in envelopes(engine, run.run_id):
        body = unframe(data).body
        assert not any(k in body for k in (b'"kind":', b"lr_exchange", b"residual", b"masked"))

    # the ledger: one entry per epoch (its steps and rows), then the end with the digest
    by_kind: dict[str, list[dict]] = {}
    for e in coord.ledger(run.run_id):
        by_kind.setdefault(e.kind, []).append(json.loads(e.payload))
    aligned = len(expected)
    steps = -(-aligned // 64)
    assert by_kind["vertical_epoch"] == [
        {"kind": "epoch", "epoch": e, "steps": steps, "rows": aligned} for e in (0, 1)
    ]
    assert "vertical_tree" not in by_kind
    model = (tmp_path / "out-bank" / "model-active.json").read_bytes()
    assert by_kind["vertical_finished"][0]["model_digest"] == hashlib.sha256(model).hexdigest()

    # later, a prediction run with the halves each party kept
    predict_again(url, coord, tmp_path, run.run_id, paths, model, expected_new)


def test_tampered_envelope_refused_naming_the_party(tmp_path: Path, fed: Fed) -> None:
    url, coord, clients, engine = fed
    paths = tables(tmp_path, n=120)
    run = create_vertical_run(coord, "vert", "bank", ["bank", "bureau"], SB)
    bank = party_proc(
        url,
        "vert",
        "bank",
        tmp_path / "bank.key",
        run.run_id,
        paths["bank"],
        tmp_path / "out-bank",
        "y",
    )
    try:
        # the test is the bureau: it takes its keys, then waits for the bank's first envelope
        wire = HttpWire(clients["bureau"], open_channel(clients["bureau"], run.run_id))
        deadline = time.monotonic() + 120
        while not envelopes(engine, run.run_id):
            assert time.monotonic() < deadline and bank.poll() is None, "no envelope from bank"
            time.sleep(0.05)
        first_id, _, _, data = envelopes(engine, run.run_id)[0]
        bad = bytearray(data)
        bad[-1] ^= 0x01  # one bit of the ciphertext's tag
        with engine.begin() as c:
            c.execute(
                sa.text("UPDATE vertical_envelopes SET frame = :f WHERE id = :i"),
                {"f": bytes(bad), "i": first_id},
            )
        with pytest.raises(ChannelError, match="party 'bank'") as refused:
            wire.receive()

        # the relay refuses an envelope whose header names another sender
        forged = Sealed(
            run=run.run_id, sender="bank", recipient="bank", seq=1, nonce=b"\0" * 12, body=b"x"
        )
        with pytest.raises(ServiceRejected, match="bureau"):
            clients["bureau"].request(
                "POST", f"/v1/silo/vertical/{run.run_id}/envelopes", body=frame(forged)
            )

        # a silo of the federation that is not a party of the run reads nothing
        outsider = SiloClient(
            url, federation="vert", silo="outsider", key=load_or_create_key(tmp_path / "o.key")
        )
        outsider.enrol()
        coord.approve("vert", "outsider")
        with pytest.raises(ServiceRejected, match="'outsider' of federation 'vert' is not a party"):
            outsider.request("GET", f"/v1/silo/vertical/{run.run_id}/inbox")

        report(clients["bureau"], run.run_id, RunFailed(reason=str(refused.value)))
        out = bank.communicate(timeout=120)[0].decode()
        assert bank.returncode == 1, out
    finally:
        if bank.poll() is None:
            bank.kill()
            bank.wait()
    final = vertical_run(coord, run.run_id)
    assert final.status == "failed"
    assert "party 'bureau'" in (final.reason or "") and "'bank'" in (final.reason or "")
    kinds = [e.kind for e in coord.ledger(run.run_id)]
    assert kinds[0] == "vertical_started" and kinds[-1] == "vertical_failed"
    with pytest.raises(ServiceRejected, match="is failed"):  # the relay is closed
        wire.send("bank", Features(run=run.run_id, sender="bureau", count=4))
