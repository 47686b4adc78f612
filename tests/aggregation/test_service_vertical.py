"""The service's side of vertical runs, through its HTTP API on each backend: agents are
offered a run until they join it, a prediction needs a finished training run of the same
parties, a size-only run ends once every party counted, and relayed envelopes are deleted
once read and when the run ends; a logistic regression run counts its epochs in order, as a
SecureBoost run counts its trees, and neither takes the other's reports."""

from __future__ import annotations

import json
import os
import threading
import uuid
from pathlib import Path

import httpx
import pytest
from support.api_federation import WIRE
from support.live_service import coordinator, enrolled_silo

from flows.service_client import CoordinatorClient
from flows.vertical import cancel_vertical_run, create_vertical_run, vertical_run
from schemas.frames import unpack_frames
from schemas.tasks import VerticalTask
from schemas.vertical import (
    EpochDone,
    LineageNode,
    PsiDone,
    RunDone,
    RunFailed,
    Sealed,
    TreeDone,
    VerticalEvent,
    VerticalParams,
    frame,
    unframe,
)
from silos.client import SiloClient
from silos.client_errors import ServiceRejected
from silos.vertical.interrupted import end_interrupted, serving

PARTIES = ["bank", "bureau"]


def federation(url: str) -> tuple[str, CoordinatorClient, dict[str, SiloClient]]:
    name = f"v-{uuid.uuid4().hex[:12]}"
    coord = coordinator(url)
    coord.create_federation(name)
    return name, coord, {s: enrolled_silo(url, coord, name, s) for s in [*PARTIES, "other"]}


def base(run: str) -> str:
    return f"/v1/silo/vertical/{run}"


def report(client: SiloClient, run: str, event: object) -> None:
    body = VerticalEvent.model_validate({"event": event}).model_dump_json().encode()
    client.request("POST", base(run) + "/events", body=body, content_type="application/json")


def test_agents_are_offered_a_run_until_they_join(api_service_url: str) -> None:
    fed, coord, silos = federation(api_service_url)
    params = VerticalParams(trees=4, depth=2, bins=8, predict=True)
    run = create_vertical_run(coord, fed, "bank", PARTIES, params)
    task = silos["bank"].next_task(wait_s=0)
    assert isinstance(task, VerticalTask) and task.run_id == run.run_id
    assert (task.vertical.mode, task.vertical.params, task.vertical.active) == (
        "train",
        params,
        "bank",
    )
    assert silos["other"].next_task(wait_s=0) is None  # not a party
    silos["bank"].request("PUT", base(run.run_id) + "/key", body=os.urandom(32))
    assert silos["bank"].next_task(wait_s=0) is None  # joined: not offered again
    bureau = silos["bureau"].next_task(wait_s=0)
    assert isinstance(bureau, VerticalTask) and bureau.run_id == run.run_id
    report(silos["bureau"], run.run_id, RunFailed(reason="policy"))
    assert silos["bureau"].next_task(wait_s=0) is None  # over: offered to nobody


def test_prediction_needs_a_finished_training_run_of_the_same_parties(
    api_service_url: str,
) -> None:
    fed, coord, silos = federation(api_service_url)
    trained = create_vertical_run(coord, fed, "bank", PARTIES)
    with pytest.raises(ServiceRejected, match="is running: its model is not whole"):
        create_vertical_run(coord, fed, "bank", PARTIES, model_run=trained.run_id)
    with pytest.raises(ServiceRejected, match="no vertical training run"):
        create_vertical_run(coord, fed, "bank", PARTIES, model_run="f" * 32)
    other = create_vertical_run(coord, fed, "bank", ["bank", "other"])
    report(silos["bank"], other.run_id, RunFailed(reason="stop"))
    with pytest.raises(ServiceRejected, match="is failed"):
        create_vertical_run(coord, fed, "bank", ["bank", "other"], model_run=other.run_id)


def test_size_only_run_ends_once_every_party_counted(api_service_url: str) -> None:
    fed, coord, silos = federation(api_service_url)
    run = create_vertical_run(coord, fed, "bank", PARTIES, size_only=True)
    report(silos["bank"], run.run_id, PsiDone(size=17))
    with pytest.raises(ServiceRejected, match="already reported"):
        report(silos["bank"], run.run_id, PsiDone(size=17))
    assert vertical_run(coord, run.run_id).status == "running"
    report(silos["bureau"], run.run_id, PsiDone(size=17))
    done = vertical_run(coord, run.run_id)
    assert (done.status, done.mode, done.psi_size, done.psi_digest) == (
        "finished",
        "psi_size",
        17,
        None,
    )
    kinds = [e.kind for e in coord.ledger(run.run_id)]
    assert kinds == ["vertical_started", "vertical_psi", "vertical_psi", "vertical_finished"]

    odd = create_vertical_run(coord, fed, "bank", PARTIES, size_only=True)
    report(silos["bank"], odd.run_id, PsiDone(size=17))
    report(silos["bureau"], odd.run_id, PsiDone(size=16))
    failed = vertical_run(coord, odd.run_id)
    assert failed.status == "failed" and "'bureau' found another intersection" in (
        failed.reason or ""
    )


def inbox(client: SiloClient, run: str, after: int) -> list[int]:
    """The seq numbers waiting for `client` past envelope id `after`."""
    resp = client.request("GET", f"{base(run)}/inbox?after={after}&wait=0")
    return [] if resp.status_code == 204 else [unframe(f).seq for f in unpack_frames(resp.content)]


def test_relay_deletes_envelopes_once_read_and_when_the_run_ends(api_service_url: str) -> None:
    fed, coord, silos = federation(api_service_url)
    run = create_vertical_run(coord, fed, "bank", PARTIES).run_id

    def post(seq: int) -> int:
        sealed = Sealed(
            run=run, sender="bank", recipient="bureau", seq=seq, nonce=os.urandom(12), body=b"x"
        )
        return int(
            silos["bank"].request("POST", base(run) + "/envelopes", body=frame(sealed)).json()["id"]
        )

    ids = [post(seq) for seq in (1, 2, 3)]
    assert inbox(silos["bureau"], run, 0) == [1, 2, 3]
    assert inbox(silos["bureau"], run, ids[1]) == [3]  # names id 2: 1 and 2 are delivered
    assert inbox(silos["bureau"], run, 0) == [3]  # ... and gone from the service
    assert inbox(silos["bureau"], run, ids[2]) == []  # the newest row is gone too
    assert post(4) > ids[2]  # ids never go back (SQLite: AUTOINCREMENT), so it is delivered
    assert inbox(silos["bureau"], run, ids[2]) == [4]
    report(silos["bank"], run, RunFailed(reason="stop"))
    assert inbox(silos["bureau"], run, 0) == []  # the run ended: nothing is kept


def test_coordinator_cancels_a_run_and_its_parties_stop(api_service_url: str) -> None:
    fed, coord, silos = federation(api_service_url)
    run = create_vertical_run(coord, fed, "bank", PARTIES).run_id
    silos["bank"].request("PUT", base(run) + "/key", body=os.urandom(32))  # bureau never came
    done = cancel_vertical_run(coord, run, "bureau's agent is down")
    assert (done.status, done.reason) == (
        "failed",
        "cancelled by the coordinator: bureau's agent is down",
    )
    resp = silos["bank"].request("GET", f"{base(run)}/inbox?after=0&wait=5")
    assert resp.status_code == 204 and resp.headers["X-Fedsilo-Vertical-Status"] == "failed"
    assert silos["bureau"].next_task(wait_s=0) is None  # no longer offered
    with pytest.raises(ServiceRejected, match="is failed: nothing to cancel"):
        cancel_vertical_run(coord, run, "again")
    assert [e.kind for e in coord.ledger(run)][-1] == "vertical_failed"


def test_an_agent_restarted_mid_run_ends_the_runs_it_was_serving(
    api_service_url: str, tmp_path: Path
) -> None:
    """A kill leaves the agent's marker; at its next start the run it was serving, still
    running, is reported failed naming the silo (its peers stop); markers of runs that ended
    meanwhile or that the service does not know are dropped without a report."""
    fed, coord, silos = federation(api_service_url)
    cut = create_vertical_run(coord, fed, "bank", PARTIES)
    over = create_vertical_run(coord, fed, "bank", PARTIES)
    silos["bank"].request("PUT", base(cut.run_id) + "/key", body=os.urandom(32))
    report(silos["bureau"], over.run_id, RunFailed(reason="policy"))
    ws = tmp_path / "workspace"
    killed = [serving(ws, run_id) for run_id in (cut.run_id, over.run_id, "f" * 32)]
    for marked in killed:  # entered, never left (kept referenced: a collected one would leave)
        marked.__enter__()
    assert end_interrupted(silos["bank"], ws) == [cut.run_id]
    ended = vertical_run(coord, cut.run_id)
    assert ended.status == "failed" and ended.reason is not None
    assert "'bank'" in ended.reason and "restarted" in ended.reason
    assert vertical_run(coord, over.run_id).reason == "party 'bureau': policy"
    assert list((ws / "vertical" / ".serving").iterdir()) == []
    assert end_interrupted(silos["bank"], ws) == []  # nothing left for the next start


DIGEST = "ab" * 32


def test_logreg_epochs_are_counted_in_order(api_service_url: str) -> None:
    fed, coord, silos = federation(api_service_url)
    bank = silos["bank"]
    params = VerticalParams(model="logreg", epochs=2)
    run = create_vertical_run(coord, fed, "bank", PARTIES, params).run_id
    report(bank, run, PsiDone(size=40, digest=DIGEST))
    report(bank, run, EpochDone(epoch=0, steps=3, rows=40))
    with pytest.raises(ServiceRejected) as skipped:  # epoch 1 never came
        report(bank, run, EpochDone(epoch=2, steps=3, rows=40))
    assert skipped.value.status == 409
    assert f"vertical run {run}: epoch 2 reported, next is 1" in skipped.value.detail
    with pytest.raises(ServiceRejected, match="not the active party"):
        report(silos["bureau"], run, EpochDone(epoch=1, steps=3, rows=40))
    report(bank, run, EpochDone(epoch=1, steps=3, rows=40))
    assert vertical_run(coord, run).epochs == 2
    with pytest.raises(ServiceRejected) as claimed:
        report(bank, run, RunDone(trees=0, epochs=3, model_digest=DIGEST))
    assert claimed.value.status == 409
    assert f"vertical run {run}: 3 epochs claimed, 2 reported" in claimed.value.detail
    report(bank, run, RunDone(trees=0, epochs=2, model_digest=DIGEST))
    done = vertical_run(coord, run)
    assert (done.status, done.epochs, done.trees, done.params.model) == (
        "finished",
        2,
        0,
        "logreg",
    )
    entries = coord.ledger(run)
    assert [e.kind for e in entries] == [
        "vertical_started",
        "vertical_psi",
        "vertical_epoch",
        "vertical_epoch",
        "vertical_finished",
    ]
    assert [json.loads(e.payload)["epoch"] for e in entries[2:4]] == [0, 1]
    assert json.loads(entries[-1].payload)["epochs"] == 2


def test_trees_and_epochs_belong_to_their_model(api_service_url: str) -> None:
    fed, coord, silos = federation(api_service_url)
    boost = create_vertical_run(coord, fed, "bank", PARTIES).run_id
    report(silos["bank"], boost, PsiDone(size=40, digest=DIGEST))
    with pytest.raises(ServiceRejected) as epoch:
        report(silos["bank"], boost, EpochDone(epoch=0, steps=1, rows=1))
    assert epoch.value.status == 422
    assert f"vertical run {boost} trains secureboost: an epoch report" in epoch.value.detail
    logreg = create_vertical_run(coord, fed, "bank", PARTIES, VerticalParams(model="logreg"))
    report(silos["bank"], logreg.run_id, PsiDone(size=40, digest=DIGEST))
    tree = TreeDone(tree=0, nodes=[LineageNode(node=0, party="bureau", depth=0)], leaves=2)
    with pytest.raises(ServiceRejected) as refused:
        report(silos["bank"], logreg.run_id, tree)
    assert refused.value.status == 422
    assert f"vertical run {logreg.run_id} trains logreg: a tree report" in refused.value.detail
    assert (vertical_run(coord, boost).epochs, vertical_run(coord, logreg.run_id).trees) == (0, 0)


def test_logreg_or_size_only_run_with_three_parties_is_refused(api_service_url: str) -> None:
    fed, coord, _ = federation(api_service_url)
    body = {
        "federation": fed,
        "active": "bank",
        "parties": [*PARTIES, "other"],
        "params": {"model": "logreg"},
    }
    with pytest.raises(ServiceRejected) as refused:  # raw JSON: the client model refuses too
        coord._json("POST", "/v1/vertical/runs", body)
    assert refused.value.status == 422
    assert "logistic regression takes two parties" in refused.value.detail
    assert "this run names 3" in refused.value.detail
    # a size-only count of three parties would show each the size of every overlap
    body = {"federation": fed, "active": "bank", "parties": [*PARTIES, "other"]}
    with pytest.raises(ServiceRejected) as counted:
        coord._json("POST", "/v1/vertical/runs", {**body, "mode": "psi_size"})
    assert counted.value.status == 422
    assert "a size-only intersection takes two parties; this run names 3" in counted.value.detail


def test_envelopes_and_counts_the_columns_cannot_hold_are_refused(api_service_url: str) -> None:
    """A header nested deeper than a header is, an envelope seq or an intersection size past
    the 32-bit columns (PostgreSQL refused them with a 500): 422s naming the silo, nothing
    stored."""
    fed, coord, silos = federation(api_service_url)
    run = create_vertical_run(coord, fed, "bank", PARTIES).run_id
    deep = b"[" * 2000 + b"]" * 2000
    big = Sealed.model_construct(
        run=run, sender="bank", recipient="bureau", seq=2**31, nonce=os.urandom(12), body=b"x"
    )
    for body in (len(deep).to_bytes(4, "big") + deep, frame(big)):
        with pytest.raises(ServiceRejected) as refused:
            silos["bank"].request("POST", base(run) + "/envelopes", body=body)
        assert refused.value.status == 422
        assert "envelope from silo 'bank'" in refused.value.detail
    with pytest.raises(ServiceRejected) as size:
        body = json.dumps({"event": {"kind": "psi_done", "size": 2**31}}).encode()
        silos["bank"].request(
            "POST", base(run) + "/events", body=body, content_type="application/json"
        )
    assert size.value.status == 422 and "silo 'bank'" in size.value.detail
    assert inbox(silos["bureau"], run, 0) == []
    assert vertical_run(coord, run).psi_size is None


def test_a_size_only_run_takes_no_model_and_training_starts_with_psi(
    api_service_url: str,
) -> None:
    fed, coord, silos = federation(api_service_url)
    bank = silos["bank"]
    tree = TreeDone(tree=0, nodes=[LineageNode(node=0, party="bureau", depth=0)], leaves=2)
    count = create_vertical_run(coord, fed, "bank", PARTIES, size_only=True).run_id
    for event in (tree, RunDone(trees=0, model_digest=DIGEST)):
        with pytest.raises(ServiceRejected) as refused:
            report(bank, count, event)
        assert refused.value.status == 422
        assert f"vertical run {count} only counts" in refused.value.detail
        assert "party 'bank'" in refused.value.detail
    report(bank, count, PsiDone(size=17))
    report(silos["bureau"], count, PsiDone(size=17))
    done = vertical_run(coord, count)
    assert (done.status, done.psi_size, done.trees, done.model_digest) == ("finished", 17, 0, None)

    trained = create_vertical_run(coord, fed, "bank", PARTIES).run_id
    for event in (RunDone(trees=0, model_digest=DIGEST), tree):
        with pytest.raises(ServiceRejected) as early:
            report(bank, trained, event)
        assert early.value.status == 409
        assert "from party 'bank' before any party reported its intersection" in (
            early.value.detail
        )
    report(bank, trained, PsiDone(size=17, digest=DIGEST))  # as agent_role.join does
    report(bank, trained, tree)
    report(bank, trained, RunDone(trees=1, model_digest=DIGEST))
    assert vertical_run(coord, trained).status == "finished"
    # a prediction: every party's PSI, then the active party's end with no trees (predict_role)
    predict = create_vertical_run(coord, fed, "bank", PARTIES, model_run=trained).run_id
    report(bank, predict, PsiDone(size=9, digest=DIGEST))
    report(silos["bureau"], predict, PsiDone(size=9, digest=DIGEST))
    for event in (tree, EpochDone(epoch=0, steps=1, rows=9)):  # it trains nothing
        with pytest.raises(ServiceRejected) as trains:
            report(bank, predict, event)
        assert trains.value.status == 422
        assert f"vertical run {predict} predicts with a trained model" in trains.value.detail
    report(bank, predict, RunDone(trees=0, model_digest=DIGEST))
    assert vertical_run(coord, predict).status == "finished"


def test_a_key_for_an_ended_run_is_refused(api_service_url: str) -> None:
    fed, coord, silos = federation(api_service_url)
    run = create_vertical_run(coord, fed, "bank", PARTIES).run_id
    cancel_vertical_run(coord, run, "stop")
    with pytest.raises(ServiceRejected) as late:
        silos["bank"].request("PUT", base(run) + "/key", body=os.urandom(32))
    assert late.value.status == 409
    assert f"vertical run {run} is failed: a key from silo 'bank' refused" in late.value.detail
    assert silos["bank"].request("GET", base(run) + "/keys").json() == {}


def put_at_once(url: str, silo: SiloClient, path: str, key: bytes, n: int) -> list[int]:
    """The status codes of `n` signed PUTs of `key` that leave together (a barrier; each on
    a connection opened beforehand)."""
    clients = [httpx.Client(base_url=url) for _ in range(n)]
    for client in clients:
        client.get("/healthz")
    start = threading.Barrier(n)
    codes: list[int] = []

    def put(client: httpx.Client, headers: dict[str, str]) -> None:
        start.wait(30)
        codes.append(client.put(path, content=key, headers=headers).status_code)

    threads = [
        threading.Thread(target=put, args=(c, {**silo._headers("PUT", path, key), **WIRE}))
        for c in clients
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    for client in clients:
        client.close()
    return codes


def test_concurrent_puts_of_one_key_store_it_once(api_service_url: str) -> None:
    """An agent's retried PUT can race its first: each used to find no key and insert it, and
    the second insert was a 500. Every PUT of the same key is a 200, another key a 409."""
    fed, coord, silos = federation(api_service_url)
    bank, key = silos["bank"], os.urandom(32)
    for _ in range(10):  # a run did not always hit the race (it failed 6 of 6 times in 10)
        run = create_vertical_run(coord, fed, "bank", PARTIES).run_id
        path = base(run) + "/key"
        assert put_at_once(api_service_url, bank, path, key, 16) == [200] * 16
        with pytest.raises(ServiceRejected) as other:
            bank.request("PUT", path, body=os.urandom(32))
        assert other.value.status == 409 and "already gave another key" in other.value.detail
        assert bank.request("GET", base(run) + "/keys").json() == {"bank": key.hex()}
