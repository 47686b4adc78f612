"""Checkpoints end to end: the service publishes them at round close and run end, silos fetch,
check, countersign and keep them, the export carries them, and verify anchors the ledger.

Over real HTTP (uvicorn on 127.0.0.1) on SQLite and PostgreSQL.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import text
from support.live_service import coordinator, enrolled_silo, service_in_thread
from support.validation import validate_all

from aggregation.service import ledger
from aggregation.service.db import make_engine, make_sessionmaker
from flows.lineage_cmds import load_silo_checkpoints, verify_anchors
from flows.service_client import CoordinatorClient
from schemas import tensors
from schemas.ledger_checkpoint import CheckpointList, CountersignIn, countersign
from schemas.ledger_export import load_ledger_export
from schemas.lineage import LineageEntry, LineageSignatureError
from schemas.specs import ModelSpec, RunSpec, SecureAggregationSpec, param_shapes
from schemas.wire import Metrics, RoundOpen, RunCreate, RunFinish
from silos.checkpoints import (
    Outbox,
    countersign_pending,
    load_checkpoints,
    poll,
    service_key_path,
)
from silos.client import SiloClient
from silos.client_errors import InvalidPayload, NotFound

SPEC = RunSpec(
    federation="f",
    dataset="toy",
    model=ModelSpec(kind="logreg", n_features=3),
    rounds=2,
    min_silos=2,
    secure_aggregation=SecureAggregationSpec(enabled=False),
)
NAMES = [n for n, _ in param_shapes(SPEC.model)]


def _update(seed: int, run_id: str, round_: int) -> bytes:
    rng = np.random.default_rng(seed)
    arrays = {n: rng.normal(size=s).astype(np.float32) for n, s in param_shapes(SPEC.model)}
    meta = {"run_id": run_id, "round": str(round_), "n_examples": "10"}
    return tensors.encode(arrays, meta)


@dataclass
class Fed:
    url: str
    db_url: str
    coord: CoordinatorClient
    silos: dict[str, SiloClient]
    workspaces: dict[str, Path]
    run_id: str


@pytest.fixture
def fed(db_url: str, tmp_path: Path) -> Iterator[Fed]:
    with service_in_thread(tmp_path / "svc", db_url) as url:
        coord = coordinator(url)
        coord.create_federation("f")
        silos = {n: enrolled_silo(url, coord, "f", n) for n in ("a", "b")}
        run = coord.create_run(RunCreate(spec=SPEC))
        zero = {n: np.zeros(s, np.float32) for n, s in param_shapes(SPEC.model)}
        coord.put_initial_model(run.run_id, tensors.encode(zero))
        coord.start_run(run.run_id)
        workspaces = {n: tmp_path / f"silo-{n}" for n in silos}
        yield Fed(url, db_url, coord, silos, workspaces, run.run_id)


def _round(fed: Fed, number: int) -> None:
    fed.coord.open_round(fed.run_id, RoundOpen(round=number, deadline_s=60))
    validate_all(fed.silos, fed.run_id, number)
    for i, client in enumerate(fed.silos.values()):
        client.submit_update(fed.run_id, number, _update(i + number, fed.run_id, number))
    assert fed.coord.close_round(fed.run_id, number).status == "aggregated"


def _entries(db_url: str) -> list[LineageEntry]:
    engine = make_engine(db_url)
    with make_sessionmaker(engine)() as s:
        out = list(ledger.iter_records(s))
    engine.dispose()
    return out


def test_silos_countersign_every_checkpoint_and_verify_uses_them(fed: Fed) -> None:
    _round(fed, 1)
    a, b = fed.silos["a"], fed.silos["b"]
    first = countersign_pending(a, fed.workspaces["a"])
    assert [c.checkpoint.event for c in first] == ["round_closed"]
    assert first[0].checkpoint.round == 1 and first[0].checkpoint.run_id == fed.run_id
    assert countersign_pending(a, fed.workspaces["a"]) == []  # nothing left to countersign
    _round(fed, 2)
    fed.coord.finish_run(fed.run_id, RunFinish(status="finished", reason="done"))
    later = countersign_pending(a, fed.workspaces["a"])
    assert [c.checkpoint.event for c in later] == ["round_closed", "run_finished"]
    countersign_pending(b, fed.workspaces["b"])
    kept = load_checkpoints(fed.workspaces["a"])
    assert [c.checkpoint.height for c in kept] == [c.checkpoint.height for c in first + later]
    entries = load_ledger_export(fed.coord.ledger_export()).entries
    run_end = kept[-1].checkpoint
    assert (run_end.height, run_end.head_hash) == (entries[-1].seq, entries[-1].entry_hash)
    assert entries[-1].kind == "run_finished"

    book = load_ledger_export(fed.coord.ledger_export())
    assert [
        sorted(c.silo for c in anchored.countersignatures) for anchored in book.checkpoints
    ] == [["silo:a", "silo:b"]] * 3
    keys = fed.coord.ledger_keys()
    ok, _ = verify_anchors(
        book.entries,
        keys,
        silo_checkpoints=load_silo_checkpoints(fed.workspaces["a"]),
        export_checkpoints=book.checkpoints,
    )
    assert ok

    # The attacker cuts the service-only tail (metrics, run_finished) and the exported
    # checkpoints; silo a's own copy still names the cut.
    engine = make_engine(fed.db_url)
    cut = run_end.height - 2
    with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            conn.execute(text("ALTER TABLE ledger_entries DISABLE TRIGGER USER"))
        else:
            conn.execute(text("DROP TRIGGER ledger_entries_no_delete"))
        conn.execute(text("DELETE FROM ledger_countersignatures"))
        conn.execute(text("DELETE FROM ledger_checkpoints"))
        conn.execute(text("DELETE FROM ledger_entries WHERE seq > :cut"), {"cut": cut})
    engine.dispose()
    cut_entries = _entries(fed.db_url)
    ok, shown = verify_anchors(
        cut_entries, keys, silo_checkpoints=load_silo_checkpoints(fed.workspaces["a"])
    )
    assert not ok
    problems = [str(line) for line in shown.renderables]  # type: ignore[attr-defined]
    expected = (
        f"ledger ends at seq {cut} but checkpoint of the end of run {fed.run_id} "
        f"(run_finished) countersigned by silo:a says height {run_end.height}"
    )
    assert any(p.strip().startswith(expected) for p in problems), problems


def test_a_round_close_is_anchored_by_one_checkpoint_at_its_last_entry(fed: Fed) -> None:
    """Updates with metrics make the close write entries after the model (the round's
    metrics): one checkpoint anchors them all, so each silo countersigns once a round."""
    fed.coord.open_round(fed.run_id, RoundOpen(round=1, deadline_s=60))
    validate_all(fed.silos, fed.run_id, 1)
    metrics = Metrics(n_test=10, loss=0.5, accuracy=0.8, auc=0.9).model_dump_json()
    for i, client in enumerate(fed.silos.values()):
        rng = np.random.default_rng(i)
        arrays = {n: rng.normal(size=s).astype(np.float32) for n, s in param_shapes(SPEC.model)}
        meta = {"run_id": fed.run_id, "round": "1", "n_examples": "10", "metrics": metrics}
        client.submit_update(fed.run_id, 1, tensors.encode(arrays, meta))
    assert fed.coord.close_round(fed.run_id, 1).status == "aggregated"
    pending = countersign_pending(fed.silos["a"], fed.workspaces["a"])
    assert [c.checkpoint.event for c in pending] == ["round_closed"]
    kinds = [e.kind for e in _entries(fed.db_url)]
    assert kinds.index("model_saved") < len(kinds) - 1  # the close wrote entries after it
    assert pending[0].checkpoint.height == _entries(fed.db_url)[-1].seq


def _countersigners(fed: Fed) -> dict[int, list[str]]:
    book = load_ledger_export(fed.coord.ledger_export())
    return {
        a.checkpoint.height: sorted(c.silo for c in a.countersignatures) for a in book.checkpoints
    }


def test_a_task_brings_the_checkpoint_and_the_next_poll_its_countersignature(fed: Fed) -> None:
    """No request of its own: the next round's task brings round 1's checkpoint, the silo
    countersigns and keeps it, and its next poll carries the countersignature to the service."""
    _round(fed, 1)
    fed.coord.open_round(fed.run_id, RoundOpen(round=2, deadline_s=60))
    a, outbox = fed.silos["a"], Outbox()
    task = poll(a, fed.workspaces["a"], outbox, wait_s=5, run_id=fed.run_id)
    assert task is not None and task.round == 2 and task.checkpoints is not None
    assert task.checkpoints.service_key == fed.coord.ledger_keys()["service"]
    [cp] = task.checkpoints.checkpoints
    assert (cp.event, cp.round, cp.run_id) == ("round_closed", 1, fed.run_id)
    [(height, signature)] = outbox.ready()
    assert height == cp.height
    assert [k.checkpoint for k in load_checkpoints(fed.workspaces["a"])] == [cp]
    assert _countersigners(fed) == {cp.height: []}  # not sent yet

    again = poll(a, fed.workspaces["a"], outbox, wait_s=5, run_id=fed.run_id)
    assert again is not None and again.round == 2
    assert again.checkpoints is None  # countersigned: not asked for again
    assert outbox.queued == []
    assert _countersigners(fed) == {cp.height: ["silo:a"]}
    assert len(load_checkpoints(fed.workspaces["a"])) == 1

    # A countersignature that does not verify is not stored, and the poll still answers
    # (the silo's own copy is its anchor); the checkpoint stays on silo b's tasks.
    b = fed.silos["b"]
    wrong = countersign(cp, "silo:b", Ed25519PrivateKey.generate()).signature
    refused = b.next_task(wait_s=5, run_id=fed.run_id, countersigned=[(cp.height, wrong)])
    assert refused is not None and refused.checkpoints is not None
    assert _countersigners(fed) == {cp.height: ["silo:a"]}
    b_outbox = Outbox()
    poll(b, fed.workspaces["b"], b_outbox, wait_s=5, run_id=fed.run_id)
    poll(b, fed.workspaces["b"], b_outbox, wait_s=5, run_id=fed.run_id)
    assert _countersigners(fed) == {cp.height: ["silo:a", "silo:b"]}

    # A malformed parameter is refused, naming the silo and the item.
    with pytest.raises(InvalidPayload, match=r"silo 'b': bad countersigned parameter: .* 1 "):
        b.request("GET", f"/v1/silo/tasks?wait=0&countersigned={cp.height}.nothex")


def test_checkpoint_routes_refuse_bad_countersignatures(fed: Fed) -> None:
    _round(fed, 1)
    a = fed.silos["a"]
    listing = CheckpointList.model_validate_json(
        a.request("GET", "/v1/silo/ledger/checkpoints").content
    )
    [cp] = listing.checkpoints
    assert listing.service_key == fed.coord.ledger_keys()["service"]
    wrong = countersign(cp, "silo:a", Ed25519PrivateKey.generate())
    with pytest.raises(InvalidPayload, match="does not verify with its registered key"):
        a.request(
            "POST",
            f"/v1/silo/ledger/checkpoints/{cp.height}/countersign",
            json_body=CountersignIn(signature=wrong.signature),
        )
    with pytest.raises(NotFound, match="no ledger checkpoint at height"):
        a.request(
            "POST",
            f"/v1/silo/ledger/checkpoints/{cp.height + 1000}/countersign",
            json_body=CountersignIn(signature=wrong.signature),
        )
    # A silo outside the run sees none of its checkpoints.
    outsider = enrolled_silo(fed.url, fed.coord, "f", "c")
    assert countersign_pending(outsider, fed.workspaces["a"].parent / "silo-c") == []


def test_a_silo_refuses_a_checkpoint_not_signed_by_the_pinned_key(fed: Fed) -> None:
    _round(fed, 1)
    workspace = fed.workspaces["a"]
    service_key_path(workspace).parent.mkdir(parents=True)
    other = Ed25519PrivateKey.generate().public_key().public_bytes_raw().hex()
    service_key_path(workspace).write_text(other + "\n")
    with pytest.raises(LineageSignatureError, match="pinned"):
        countersign_pending(fed.silos["a"], workspace)
    assert load_checkpoints(workspace) == []
