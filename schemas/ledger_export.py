"""Export a lineage ledger as JSON Lines and read it back, detecting truncation.

Export format (JSON Lines, UTF-8, every line ends with a newline), version 2::

    {"format":"fedsilo-ledger-export","version":2}
    <canonical JSON of entry 1>
    ...
    {"checkpoint":{...},"countersignatures":[{"signature":..,"silo":..}]}   (0 or more)
    ...
    {"trailer":{"checkpoints":C,"count":N,"head_hash":"<entry_hash of the last entry>",
                "head_seq":S}}

Version 1 (no checkpoint lines, no ``checkpoints`` in the trailer) is still read.

A file cut anywhere loses its trailer (or ends in a partial line), which `load_export` reports
as "export truncated after entry N". A trailer is not a signature: someone who truncates the
file *and* writes a fresh trailer produces a shorter valid chain; a silo's receipts
(`cross_check`), the countersigned checkpoints the silos keep (`schemas.ledger_anchor`) or a
head hash recorded elsewhere catch that. Checkpoints in an export come from the service being
audited: they anchor only through silo countersignatures, and a silo's own copy is stronger.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass

from pydantic import ValidationError

from schemas.ledger_checkpoint import AnchoredCheckpoint
from schemas.lineage import (
    GENESIS_HASH,
    CanonicalJsonError,
    LineageEntry,
    LineageError,
    canonical_json,
)

EXPORT_FORMAT = "fedsilo-ledger-export"
EXPORT_VERSION = 2
READABLE_VERSIONS = (1, 2)


class ExportError(LineageError):
    """An export file cannot be read as a ledger export."""


class ExportTruncatedError(ExportError):
    """An export file ends early: its trailer is missing or its last line is partial."""


@dataclass(frozen=True)
class LedgerExport:
    """What an export holds: the entries and the checkpoints (none in a version 1 export)."""

    entries: list[LineageEntry]
    checkpoints: list[AnchoredCheckpoint]
    version: int


def export_entries(
    entries: Iterable[LineageEntry], checkpoints: Iterable[AnchoredCheckpoint] = ()
) -> str:
    """Serialise a ledger and its checkpoints as JSON Lines with a header and a trailer."""
    header = canonical_json({"format": EXPORT_FORMAT, "version": EXPORT_VERSION})
    lines = [header]
    count, head_seq, head_hash = 0, 0, GENESIS_HASH
    for entry in entries:
        lines.append(canonical_json(entry.model_dump(), path=f"entry {entry.seq}"))
        count, head_seq, head_hash = count + 1, entry.seq, entry.entry_hash
    n_checkpoints = 0
    for anchored in checkpoints:
        lines.append(canonical_json(anchored.model_dump(mode="json")))
        n_checkpoints += 1
    trailer = {
        "checkpoints": n_checkpoints,
        "count": count,
        "head_hash": head_hash,
        "head_seq": head_seq,
    }
    lines.append(canonical_json({"trailer": trailer}))
    return "\n".join(lines) + "\n"


def _parse_line(line: str, lineno: int) -> dict:
    """Parse one export line, which must be canonical JSON (line N holds entry N - 1).

    Comparing the line with its canonical re-serialisation catches every edit that still
    parses (duplicate keys, NaN, reordered keys, escapes) without a slower strict parser.
    """
    where = f"line {lineno}" + (f" (entry {lineno - 1})" if lineno > 1 else "")
    try:
        value = json.loads(line)
        canonical = canonical_json(value)
    except (json.JSONDecodeError, CanonicalJsonError) as exc:
        raise ExportError(f"{where}: not valid JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise ExportError(f"{where}: not a JSON object")
    if canonical != line:
        raise ExportError(f"{where}: not canonical JSON (the line was edited)")
    return value


def load_export(text: str) -> list[LineageEntry]:
    """The entries of an export written by `export_entries` (version 1 or 2).

    Raises
    ------
    ExportTruncatedError
        If the file ends in a partial line or without its trailer ("export truncated after
        entry N"), or the trailer's count/head disagree with the entries.
    ExportError
        If the header is missing or a line is not an entry.
    """
    return load_ledger_export(text).entries


def _header_version(complete: list[str]) -> int:
    if not complete:
        raise ExportTruncatedError("export truncated before its header (empty file)")
    header = _parse_line(complete[0], 1)
    version = header.get("version")
    if (
        header.get("format") != EXPORT_FORMAT
        or version not in READABLE_VERSIONS
        or len(header) != 2
    ):
        raise ExportError(f"line 1 is not a {EXPORT_FORMAT} v{EXPORT_VERSION} header")
    return int(version)


def load_ledger_export(text: str) -> LedgerExport:
    """Read an export (entries and, from version 2, checkpoints); errors as `load_export`."""
    lines = text.split("\n")
    complete, partial = lines[:-1], lines[-1]
    version = _header_version(complete)
    entries: list[LineageEntry] = []
    checkpoints: list[AnchoredCheckpoint] = []
    trailer: dict | None = None
    for lineno, line in enumerate(complete[1:], start=2):
        after = entries[-1].seq if entries else 0
        if trailer is not None:
            raise ExportError(f"line {lineno}: content after the trailer (after entry {after})")
        value = _parse_line(line, lineno)
        if "trailer" in value:
            trailer = value["trailer"]
            continue
        try:
            if "checkpoint" in value and version >= 2:
                checkpoints.append(AnchoredCheckpoint.model_validate(value))
                continue
            if checkpoints:
                raise ExportError(f"line {lineno}: entry after the checkpoints")
            entries.append(LineageEntry.model_validate(value))
        except ValidationError as exc:
            raise ExportError(f"line {lineno} (entry {lineno - 1}): not an entry: {exc}") from exc
    last = entries[-1].seq if entries else 0
    if partial or trailer is None:
        raise ExportTruncatedError(
            f"export truncated after entry {last}"
            + (" (partial last line)" if partial else " (no trailer)")
        )
    _check_trailer(trailer, entries)
    if version >= 2 and trailer.get("checkpoints") != len(checkpoints):
        raise ExportTruncatedError(
            f"export trailer says {trailer.get('checkpoints')} checkpoints, the file holds "
            f"{len(checkpoints)}: checkpoints were removed or added"
        )
    return LedgerExport(entries, checkpoints, version)


def _check_trailer(trailer: dict, entries: list[LineageEntry]) -> None:
    head = entries[-1].entry_hash if entries else GENESIS_HASH
    if trailer.get("count") != len(entries) or trailer.get("head_hash") != head:
        raise ExportTruncatedError(
            f"export trailer says {trailer.get('count')} entries ending at "
            f"{trailer.get('head_hash')}, the file holds {len(entries)} ending at {head}: "
            "entries were removed or added"
        )
