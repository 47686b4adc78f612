"""The silo's side of checkpoints on the task poll: what it keeps, what it sends back, and the
highest kept height read from the end of its file (`silos.checkpoints`)."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from schemas.ledger_checkpoint import (
    AnchoredCheckpoint,
    Checkpoint,
    CheckpointList,
    countersign,
    make_checkpoint,
    valid_countersigners,
)
from silos.checkpoints import (
    checkpoints_path,
    countersign_listed,
    highest_kept,
    load_checkpoints,
)
from silos.client import SiloClient

SERVICE = Ed25519PrivateKey.generate()
SILO = Ed25519PrivateKey.generate()
SERVICE_HEX = SERVICE.public_key().public_bytes_raw().hex()


def _cp(height: int, key: Ed25519PrivateKey = SERVICE) -> Checkpoint:
    return make_checkpoint(
        key,
        height=height,
        head_hash=f"{height:064x}",
        run_id="r1",
        round=height,
        event="round_closed",
    )


def _listing(*heights: int) -> CheckpointList:
    return CheckpointList(service_key=SERVICE_HEX, checkpoints=[_cp(h) for h in heights])


@pytest.fixture
def client() -> SiloClient:
    # countersigning is local: the client only lends its silo name and key (port 9: discard)
    return SiloClient("http://127.0.0.1:9", federation="f", silo="a", key=SILO)


def test_only_checkpoints_above_the_highest_kept_are_countersigned_and_kept(
    client: SiloClient, tmp_path: Path
) -> None:
    assert highest_kept(tmp_path) == 0
    sent = countersign_listed(client, tmp_path, _listing(3, 5, 9))
    assert [h for h, _ in sent] == [3, 5, 9]
    kept = load_checkpoints(tmp_path)
    assert [k.checkpoint.height for k in kept] == [3, 5, 9]
    keys = {"silo:a": SILO.public_key()}
    assert all(valid_countersigners(k, keys) == (["silo:a"], []) for k in kept)
    assert [s for _, s in sent] == [k.countersignatures[0].signature for k in kept]
    assert highest_kept(tmp_path) == 9
    # the same listing again (a poll that did not get through): nothing is kept twice
    assert countersign_listed(client, tmp_path, _listing(3, 5, 9)) == []
    assert [h for h, _ in countersign_listed(client, tmp_path, _listing(7, 12))] == [12]
    assert [k.checkpoint.height for k in load_checkpoints(tmp_path)] == [3, 5, 9, 12]


def test_a_checkpoint_the_pinned_key_did_not_sign_stops_the_listing_there(
    client: SiloClient, tmp_path: Path
) -> None:
    forged = _cp(8, Ed25519PrivateKey.generate())
    listing = CheckpointList(service_key=SERVICE_HEX, checkpoints=[_cp(4), forged, _cp(10)])
    assert [h for h, _ in countersign_listed(client, tmp_path, listing)] == [4]
    assert [k.checkpoint.height for k in load_checkpoints(tmp_path)] == [4]
    # and a service presenting another key than the pinned one gets nothing countersigned
    other = Ed25519PrivateKey.generate().public_key().public_bytes_raw().hex()
    moved = CheckpointList(service_key=other, checkpoints=[_cp(11)])
    assert countersign_listed(client, tmp_path, moved) == []
    assert highest_kept(tmp_path) == 4


def test_highest_kept_reads_a_last_line_longer_than_its_tail_read(tmp_path: Path) -> None:
    countersignatures = tuple(
        countersign(_cp(77), f"silo:s{i}", Ed25519PrivateKey.generate()) for i in range(80)
    )
    path = checkpoints_path(tmp_path)
    path.parent.mkdir(parents=True)
    lines = [
        AnchoredCheckpoint(checkpoint=_cp(5)).model_dump_json(),
        AnchoredCheckpoint(
            checkpoint=_cp(77), countersignatures=countersignatures
        ).model_dump_json(),
    ]
    assert len(lines[1]) > 8192
    path.write_text("\n".join(lines) + "\n")
    assert highest_kept(tmp_path) == 77
