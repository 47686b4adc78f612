"""The silo's own copy of its lineage: every statement it signed and the service's receipt.

Kept as JSON Lines in the silo's workspace (`lineage/records.jsonl`), so the silo can later
prove what it sent and detect a service that rewrote history
(`fedsilo lineage verify --silo-copy DIR`). The ledger checkpoints it countersigned sit beside
it (`lineage/checkpoints.jsonl`, see `silos.checkpoints`).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from schemas.ledger_verify import SiloRecord


def records_path(workspace: Path) -> Path:
    return workspace / "lineage" / "records.jsonl"


def keep_receipt(workspace: Path, answer: dict[str, Any]) -> SiloRecord | None:
    """Append the acknowledged statement to the silo's copy (no-op for a duplicate answer)."""
    if not answer.get("receipt"):
        return None
    record = SiloRecord.model_validate(
        {
            "statement": answer["statement"],
            "author_signature": answer["author_signature"],
            "receipt": answer["receipt"],
        }
    )
    append_record(workspace, record)
    return record


def append_record(workspace: Path, record: SiloRecord) -> None:
    """Append one record to the silo's copy, durably (a receipt lost here is lost for good
    unless the service's ledger is asked again, `silos.ledger_sync`)."""
    path = records_path(workspace)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    with path.open("a", encoding="utf-8") as fh:
        fh.write(record.model_dump_json() + "\n")
        fh.flush()
        os.fsync(fh.fileno())


def load_records(workspace: Path) -> list[SiloRecord]:
    path = records_path(workspace)
    if not path.exists():
        return []
    # Split on "\n" only: JSON keeps U+2028 and U+0085 raw in strings, and splitlines() would
    # cut a record there.
    return [
        SiloRecord.model_validate(json.loads(line))
        for line in path.read_text(encoding="utf-8").split("\n")
        if line
    ]
