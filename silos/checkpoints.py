"""The silo's countersignatures of the service's ledger checkpoints, kept in its workspace.

After a round closes (and when a run ends) the silo fetches the checkpoints it has not
countersigned, checks each one's service signature against the service key it pinned the first
time (``lineage/service_ed25519.hex``), countersigns it with its identity key, sends the
countersignature to the service and keeps the checkpoint with both signatures in
``lineage/checkpoints.jsonl``. `fedsilo lineage verify --silo-copy WORKSPACE` reads that file:
a ledger cut or rewritten at or before any of these heights no longer matches it.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from pydantic import ValidationError

from schemas.ledger_checkpoint import (
    AnchoredCheckpoint,
    Checkpoint,
    CheckpointList,
    CountersignIn,
    countersign,
    verify_checkpoint,
)
from schemas.lineage import LineageSignatureError
from silos.client import SiloClient
from silos.client_errors import ClientError

log = logging.getLogger("fedsilo.silo")


def checkpoints_path(workspace: Path) -> Path:
    return workspace / "lineage" / "checkpoints.jsonl"


def service_key_path(workspace: Path) -> Path:
    return workspace / "lineage" / "service_ed25519.hex"


def load_checkpoints(workspace: Path) -> list[AnchoredCheckpoint]:
    """The checkpoints this silo countersigned, oldest first."""
    path = checkpoints_path(workspace)
    if not path.exists():
        return []
    return [
        AnchoredCheckpoint.model_validate_json(line)
        for line in path.read_text().splitlines()
        if line.strip()
    ]


def pinned_service_key(workspace: Path, offered_hex: str) -> Ed25519PublicKey:
    """The service key this silo trusts: pinned at first use, then never silently replaced.

    Raises
    ------
    LineageSignatureError
        When the service now presents another key (a new service identity must be pinned by
        the silo operator, by replacing the file after checking the new key out of band).
    """
    path = service_key_path(workspace)
    if path.exists():
        pinned = path.read_text().strip()
        if pinned != offered_hex:
            raise LineageSignatureError(
                f"the service presents ledger key {offered_hex[:16]}… but this silo pinned "
                f"{pinned[:16]}… in {path}; if the service key was rotated on purpose, check the "
                "new one with the coordinator and replace that file"
            )
    else:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        path.write_text(offered_hex + "\n")
    return Ed25519PublicKey.from_public_bytes(bytes.fromhex(offered_hex))


def _keep(workspace: Path, anchored: AnchoredCheckpoint) -> None:
    path = checkpoints_path(workspace)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    with path.open("a") as fh:
        fh.write(anchored.model_dump_json() + "\n")
        fh.flush()
        os.fsync(fh.fileno())


def _countersign_one(
    client: SiloClient, workspace: Path, checkpoint: Checkpoint, service_key: Ed25519PublicKey
) -> AnchoredCheckpoint:
    verify_checkpoint(checkpoint, service_key)
    mine = countersign(checkpoint, f"silo:{client.silo}", client.key)
    client.request(
        "POST",
        f"/v1/silo/ledger/checkpoints/{checkpoint.height}/countersign",
        json_body=CountersignIn(signature=mine.signature),
    )
    anchored = AnchoredCheckpoint(checkpoint=checkpoint, countersignatures=(mine,))
    _keep(workspace, anchored)
    return anchored


def countersign_pending(client: SiloClient, workspace: Path) -> list[AnchoredCheckpoint]:
    """Fetch, check, countersign and keep every checkpoint this silo has not countersigned.

    Raises
    ------
    LineageSignatureError
        A checkpoint's service signature does not verify with the pinned key (it is neither
        countersigned nor kept), or the service presents another key than the pinned one.
    ClientError
        The service refused or could not be reached.
    ValidationError
        The service's answer is not a checkpoint list.
    """
    kept = load_checkpoints(workspace)
    after = max((a.checkpoint.height for a in kept), default=0)
    resp = client.request("GET", f"/v1/silo/ledger/checkpoints?after={after}")
    listing = CheckpointList.model_validate_json(resp.content)
    service_key = pinned_service_key(workspace, listing.service_key)
    return [_countersign_one(client, workspace, cp, service_key) for cp in listing.checkpoints]


def keep_countersigned(client: SiloClient, workspace: Path) -> None:
    """`countersign_pending` for the agent: a failure is logged, never stops training."""
    try:
        done = countersign_pending(client, workspace)
    except LineageSignatureError as exc:
        log.error("silo %s: ledger checkpoint NOT countersigned: %s", client.silo, exc)
        return
    except (ClientError, ValidationError) as exc:  # unreachable, refused or malformed: later
        log.warning("silo %s: ledger checkpoints not fetched now: %s", client.silo, exc)
        return
    if done:
        heights = ", ".join(str(a.checkpoint.height) for a in done)
        log.info("silo %s: countersigned ledger checkpoints at heights %s", client.silo, heights)
