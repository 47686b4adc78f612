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
Still, a service-signed checkpoint above the last entry gives away a file cut by someone
without the service key (an honest export holds none: `export_entries`).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, ValidationError

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


class ExportFormatError(ExportError):
    """An export's trailer is not the trailer `export_entries` writes: a malformed file, not
    a ledger that fails verification."""


class _Trailer(BaseModel):
    """The trailer line's object; ``checkpoints`` is absent in version 1."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)

    checkpoints: int | None = None
    count: int
    head_hash: str
    head_seq: int


@dataclass(frozen=True)
class LedgerExport:
    """What an export holds: the entries and the checkpoints (none in a version 1 export)."""

    entries: list[LineageEntry]
    checkpoints: list[AnchoredCheckpoint]
    version: int


def export_entries(
    entries: Iterable[LineageEntry], checkpoints: Iterable[AnchoredCheckpoint] = ()
) -> str:
    """Serialise a ledger and its checkpoints as JSON Lines with a header and a trailer.

    Read `checkpoints` before `entries`, as the service does (a list, then a generator): a
    checkpoint commits with the entries it names, so none is then above the last entry even
    if the reads see different snapshots, and a verifier takes a service-signed checkpoint
    above the end for entries cut from the export.
    """
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


def _where(line: str, lineno: int, entries: int, checkpoints: int) -> str:
    """``line 7 (checkpoint 1)``: what a line holds, told by its first key (keys are sorted)."""
    if lineno == 1:
        return "line 1"
    if line.startswith('{"checkpoint":'):
        return f"line {lineno} (checkpoint {checkpoints + 1})"
    if line.startswith('{"trailer":'):
        return f"line {lineno} (trailer)"
    return f"line {lineno} (entry {entries + 1})"


def _parse_line(line: str, where: str) -> dict:
    """Parse one export line, which must be canonical JSON (`where` names it in errors).

    Comparing the line with its canonical re-serialisation catches every edit that still
    parses (duplicate keys, NaN, reordered keys, escapes) without a slower strict parser;
    strict validation of the models then refuses a value of another type ("1", 1.0, true).
    """
    if line.endswith("\r"):
        raise ExportError(
            f"{where}: ends in a carriage return (CRLF line endings, e.g. from a Windows "
            "editor or git's autocrlf); exports use LF only: convert it back (dos2unix)"
        )
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


def _first_error(exc: ValidationError) -> str:
    error = exc.errors()[0]
    field = ".".join(str(part) for part in error["loc"])
    return f"{field}: {error['msg']}" if field else error["msg"]


def load_export(text: str) -> list[LineageEntry]:
    """The entries of an export written by `export_entries` (version 1 or 2).

    Raises
    ------
    ExportTruncatedError
        If the file ends in a partial line or without its trailer ("export truncated after
        entry N"), or the trailer's count/head disagree with the entries.
    ExportFormatError
        If the trailer line is not a trailer object.
    ExportError
        If the header is missing or a line is not an entry or a checkpoint.
    """
    return load_ledger_export(text).entries


def _header_version(complete: list[str]) -> int:
    if not complete:
        raise ExportTruncatedError("export truncated before its header (empty file)")
    header = _parse_line(complete[0], "line 1")
    version = header.get("version")
    if (
        header.get("format") != EXPORT_FORMAT
        or type(version) is not int
        or version not in READABLE_VERSIONS
        or len(header) != 2
    ):
        raise ExportError(f"line 1 is not a {EXPORT_FORMAT} v{EXPORT_VERSION} header")
    return version


def _parse_record(
    value: dict, line: str, where: str, version: int
) -> LineageEntry | AnchoredCheckpoint:
    """An entry, or from version 2 a checkpoint; strict, so no field changed type."""
    is_checkpoint = "checkpoint" in value and version >= 2
    try:
        if is_checkpoint:  # from the text: strict JSON mode reads a list as a tuple
            return AnchoredCheckpoint.model_validate_json(line, strict=True)
        return LineageEntry.model_validate(value, strict=True)
    except ValidationError as exc:
        what = "checkpoint" if is_checkpoint else "entry"
        raise ExportError(f"{where}: not a valid {what}: {_first_error(exc)}") from exc


def load_ledger_export(text: str) -> LedgerExport:
    """Read an export (entries and, from version 2, checkpoints); errors as `load_export`."""
    lines = text.split("\n")
    complete, partial = lines[:-1], lines[-1]
    version = _header_version(complete)
    entries: list[LineageEntry] = []
    checkpoints: list[AnchoredCheckpoint] = []
    trailer: _Trailer | None = None
    for lineno, line in enumerate(complete[1:], start=2):
        after = entries[-1].seq if entries else 0
        if trailer is not None:
            raise ExportError(f"line {lineno}: content after the trailer (after entry {after})")
        where = _where(line, lineno, len(entries), len(checkpoints))
        value = _parse_line(line, where)
        if "trailer" in value:
            trailer = _parse_trailer(value, f"line {lineno} (trailer)", version)
            continue
        record = _parse_record(value, line, where, version)
        if isinstance(record, AnchoredCheckpoint):
            checkpoints.append(record)
        elif checkpoints:
            raise ExportError(f"{where}: entry after the checkpoints")
        else:
            entries.append(record)
    last = entries[-1].seq if entries else 0
    if partial or trailer is None:
        raise ExportTruncatedError(
            f"export truncated after entry {last}"
            + (" (partial last line)" if partial else " (no trailer)")
        )
    _check_trailer(trailer, entries, checkpoints)
    return LedgerExport(entries, checkpoints, version)


def _parse_trailer(value: dict, where: str, version: int) -> _Trailer:
    """The trailer, exactly as `export_entries` writes it for `version`."""
    fields = ("checkpoints, " if version >= 2 else "") + "count, head_hash, head_seq"
    trailer, problem = None, None
    try:
        trailer = _Trailer.model_validate(value["trailer"])
    except ValidationError as exc:
        problem = _first_error(exc)
    if not isinstance(value["trailer"], dict):
        problem = f"{canonical_json(value['trailer'])[:40]}, not an object"
    elif len(value) != 1:
        problem = "keys beside 'trailer'"
    elif trailer is not None and (trailer.checkpoints is None) != (version < 2):
        problem = "no checkpoints" if version >= 2 else "checkpoints in a version 1 trailer"
    if trailer is None or problem is not None:
        raise ExportFormatError(
            f"{where}: not a version {version} trailer {{{fields}}} ({problem}); the file was "
            "edited or is not a fedsilo ledger export"
        )
    return trailer


def _check_trailer(
    trailer: _Trailer, entries: list[LineageEntry], checkpoints: list[AnchoredCheckpoint]
) -> None:
    head_seq, head = (entries[-1].seq, entries[-1].entry_hash) if entries else (0, GENESIS_HASH)
    said = (trailer.count, trailer.head_seq, trailer.head_hash)
    if said != (len(entries), head_seq, head):
        raise ExportTruncatedError(
            f"export trailer says {trailer.count} entries ending at seq {trailer.head_seq} "
            f"{trailer.head_hash}, the file holds {len(entries)} ending at seq {head_seq} "
            f"{head}: entries were removed or added"
        )
    if trailer.checkpoints is not None and trailer.checkpoints != len(checkpoints):
        raise ExportTruncatedError(
            f"export trailer says {trailer.checkpoints} checkpoints, the file holds "
            f"{len(checkpoints)}: checkpoints were removed or added"
        )
