"""The silo's countersignatures of the service's ledger checkpoints, kept in its workspace.

A task brings the checkpoints the silo has not countersigned (a round's close publishes one, so
the next round's first task brings it). The silo checks each one's service signature against
the service key it pinned the first time (``lineage/service_ed25519.hex``), countersigns it
with its identity key beside the task's work, keeps the checkpoint with both signatures in
``lineage/checkpoints.jsonl``, and sends the countersignature on its next task poll (`poll`).
When its flow ends it posts whatever is still unsent and asks for anything it missed
(`flush`, `keep_countersigned`). `fedsilo lineage verify --silo-copy WORKSPACE` reads that
file: a ledger cut or rewritten at or before any of these heights no longer matches it.
"""

from __future__ import annotations

import logging
import os
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from pydantic import ValidationError

from schemas.ledger_checkpoint import (
    MAX_COUNTERSIGNED_PER_POLL,
    AnchoredCheckpoint,
    Checkpoint,
    CheckpointList,
    Countersignature,
    CountersignIn,
    countersign,
    verify_checkpoint,
)
from schemas.lineage import LineageSignatureError
from schemas.tasks import Task
from silos.client import SiloClient
from silos.client_errors import ClientError

log = logging.getLogger("fedsilo.silo")
_TAIL_BYTES = 8192  # a kept line is about 700 bytes


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
        for line in path.read_text(encoding="utf-8").split("\n")  # as lineage_copy reads
        if line.strip()
    ]


def highest_kept(workspace: Path) -> int:
    """The highest checkpoint this silo kept, read from the file's last line: heights only
    grow down the file (each countersign keeps only checkpoints above it), and a silo's file
    gains a line every round, so reading all of it every round would not stay cheap."""
    path = checkpoints_path(workspace)
    if not path.exists():
        return 0
    with path.open("rb") as fh:
        fh.seek(0, os.SEEK_END)
        fh.seek(max(0, fh.tell() - _TAIL_BYTES))
        lines = [line for line in fh.read().splitlines() if line.strip()]
    try:
        return AnchoredCheckpoint.model_validate_json(lines[-1]).checkpoint.height if lines else 0
    except ValidationError:  # a line longer than the tail read: read it all
        return max((a.checkpoint.height for a in load_checkpoints(workspace)), default=0)


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
    with path.open("a", encoding="utf-8") as fh:
        fh.write(anchored.model_dump_json() + "\n")
        fh.flush()
        os.fsync(fh.fileno())


def _countersigned(
    client: SiloClient, checkpoint: Checkpoint, service_key: Ed25519PublicKey
) -> Countersignature:
    """This silo's countersignature of `checkpoint`, once its service signature verifies."""
    verify_checkpoint(checkpoint, service_key)
    return countersign(checkpoint, f"silo:{client.silo}", client.key)


def _send(client: SiloClient, height: int, signature: str) -> None:
    client.request(
        "POST",
        f"/v1/silo/ledger/checkpoints/{height}/countersign",
        json_body=CountersignIn(signature=signature),
    )


def _countersign_one(
    client: SiloClient, workspace: Path, checkpoint: Checkpoint, service_key: Ed25519PublicKey
) -> AnchoredCheckpoint:
    mine = _countersigned(client, checkpoint, service_key)
    _send(client, checkpoint.height, mine.signature)
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
    resp = client.request("GET", f"/v1/silo/ledger/checkpoints?after={highest_kept(workspace)}")
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


# Countersigning (a signature check, a signature and an fsync'd append) runs beside the work a
# task brought, not before it. One thread: one countersign at a time, so two runs' flows never
# keep the same checkpoint twice.
_countersigner = ThreadPoolExecutor(1, thread_name_prefix="fedsilo-countersign")


@dataclass
class Outbox:
    """A flow's countersignatures on their way to the service."""

    queued: list[tuple[int, str]] = field(default_factory=list)
    signing: Future[list[tuple[int, str]]] | None = None

    def ready(self) -> list[tuple[int, str]]:
        """Everything countersigned so far (waits for the one in progress)."""
        signing, self.signing = self.signing, None
        if signing is not None:
            self.queued += signing.result()  # a bug raised there is raised once, not each poll
        return self.queued


def countersign_listed(
    client: SiloClient, workspace: Path, listing: CheckpointList
) -> list[tuple[int, str]]:
    """Check, countersign and keep the listed checkpoints above the highest this silo kept;
    returns (height, signature) for the service. A failure is logged, never stops training."""
    done: list[tuple[int, str]] = []
    try:
        service_key = pinned_service_key(workspace, listing.service_key)
        after = highest_kept(workspace)
        for checkpoint in listing.checkpoints:
            if checkpoint.height > after:
                mine = _countersigned(client, checkpoint, service_key)
                anchored = AnchoredCheckpoint(checkpoint=checkpoint, countersignatures=(mine,))
                _keep(workspace, anchored)
                done.append((checkpoint.height, mine.signature))
    except LineageSignatureError as exc:
        log.error("silo %s: ledger checkpoint NOT countersigned: %s", client.silo, exc)
    if done:
        heights = ", ".join(str(h) for h, _ in done)
        log.info("silo %s: countersigned ledger checkpoints at heights %s", client.silo, heights)
    return done


def poll(
    client: SiloClient, workspace: Path, outbox: Outbox, *, wait_s: float, run_id: str | None
) -> Task | None:
    """`client.next_task` carrying the outbox's countersignatures; the checkpoints a task
    brings are countersigned in the background, for the next poll."""
    if run_id is not None and client.followed(run_id):
        # the answer to the silo's last message brought the task: no poll goes out, and the
        # countersignatures ride on the next request that asks for a task
        client.carry_countersigned(outbox.ready())
        outbox.queued.clear()
        sending = []
    else:
        sending = outbox.ready()[:MAX_COUNTERSIGNED_PER_POLL]
    work = client.next_task(wait_s=wait_s, run_id=run_id, countersigned=sending)
    del outbox.queued[: len(sending)]  # the service has them (a refused one it logged)
    if work is not None and work.checkpoints is not None:
        outbox.signing = _countersigner.submit(
            countersign_listed, client, workspace, work.checkpoints
        )
    return work


def flush(client: SiloClient, outbox: Outbox) -> None:
    """Post the countersignatures no poll carried (the flow is ending)."""
    outbox.queued[:0] = client.take_countersigned()
    try:
        while outbox.ready():
            _send(client, *outbox.queued[0])
            del outbox.queued[0]
    except ClientError as exc:  # kept in the workspace all the same
        log.warning("silo %s: countersignatures not sent: %s", client.silo, exc)
