"""What `fedsilo lineage ...` does, as plain functions over ledger entries.

The CLI fetches the entries (from the service's ``/v1/ledger/export`` or an export file) and the
public keys (``/v1/ledger/keys``), calls one of these, prints the result and exits with its
status. Keeping the commands free of HTTP and typer lets a reviewer script them and lets tests
run them on real ledgers.

Keys are raw Ed25519 public keys in hex, keyed ``service`` and ``silo:<name>``. Keys fetched
from the service being audited only prove that the service's own records are consistent; a
reviewer who wants more compares the silo keys with the ones the silos hold (``--silo-copy``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from pydantic import ValidationError
from rich.console import Group, RenderableType
from rich.text import Text

from flows.lineage_tables import (
    Contribution,
    checkpoints_table,
    contributions,
    contributions_table,
    show_run,
)
from flows.lineage_view import (
    LineageReviewError,
    payload_of,
)
from schemas.ledger_anchor import AnchorReport, check_anchors, countersignature_problems
from schemas.ledger_checkpoint import AnchoredCheckpoint, merge_checkpoints
from schemas.ledger_export import (
    ExportError,
    ExportFormatError,
    ExportTruncatedError,
    LedgerExport,
    load_ledger_export,
)
from schemas.ledger_verify import (
    ArtifactChecker,
    SiloRecord,
    VerifyReport,
    cross_check,
    directory_artifact_checker,
    verify_chain,
)
from schemas.lineage import SERVICE_AUTHOR, LineageEntry

__all__ = [
    "Contribution",
    "LineageReviewError",
    "anchor_problems",
    "contributions",
    "checkpoints_table",
    "contributions_table",
    "fetched_artifact_checker",
    "load_entries_from_export",
    "load_export_file",
    "load_silo_checkpoints",
    "load_silo_records",
    "parse_keys",
    "show_run",
    "verify",
    "verify_anchors",
    "verify_silo_copies",
    "verify_silo_copy",
]

SILO_RECORDS = Path("lineage") / "records.jsonl"
SILO_CHECKPOINTS = Path("lineage") / "checkpoints.jsonl"


def parse_keys(keys: Mapping[str, str]) -> dict[str, Ed25519PublicKey]:
    """Turn ``{"service": hex, "silo:<name>": hex}`` into public keys.

    Raises
    ------
    LineageReviewError
        If a key is not 64 hex digits (32 raw bytes), naming its owner.
    """
    parsed: dict[str, Ed25519PublicKey] = {}
    for owner, text in keys.items():
        try:
            raw = bytes.fromhex(text)
            parsed[owner] = Ed25519PublicKey.from_public_bytes(raw)
        except (TypeError, ValueError) as exc:  # TypeError: not a string (keys file edited)
            raise LineageReviewError(
                f"public key of {owner} is not a raw Ed25519 key in hex (64 hex digits): "
                f"{text!r:.24}...; fetch the keys again from /v1/ledger/keys"
            ) from exc
    return parsed


def _decode(data: bytes, path: Path) -> str:
    """UTF-8 text of an export; a multi-byte character cut at the very end is a truncation."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        if exc.end == len(data) and exc.reason == "unexpected end of data":
            # Drop the cut character: load_export then reports the partial last line.
            return data[: exc.start].decode("utf-8")
        raise ExportError(
            f"{path}: byte {exc.start} is not UTF-8 ({exc.reason}); the export was altered or "
            "is not a fedsilo ledger export"
        ) from exc


def load_entries_from_export(path: Path) -> list[LineageEntry]:
    """The entries of a ledger export (`load_export_file`; same errors)."""
    return load_export_file(path).entries


def load_export_file(path: Path) -> LedgerExport:
    """Read a ledger export written by `schemas.ledger_export.export_entries`: its entries and
    (version 2) the checkpoints with their countersignatures.

    Raises
    ------
    ExportTruncatedError
        ``"<path>: export truncated after entry N (partial last line)"`` (or ``(no
        trailer)``) when the file was cut; also when its trailer disagrees with its entries.
    ExportError
        If a line is not canonical JSON or not an entry (named by line and entry).
    LineageReviewError
        If the file cannot be read, or its trailer is not a trailer object.
    """
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise LineageReviewError(
            f"cannot read ledger export {path}: {exc.strerror}; write one with "
            "`fedsilo lineage export` or GET /v1/ledger/export"
        ) from exc
    try:
        return load_ledger_export(_decode(data, path))
    except ExportFormatError as exc:  # not an export at all: a bad input file, not a verdict
        raise LineageReviewError(f"{path}: {exc}") from exc
    except ExportTruncatedError as exc:
        raise ExportTruncatedError(f"{path}: {exc}") from exc
    except ExportError as exc:
        raise ExportError(f"{path}: {exc}") from exc


def fetched_artifact_checker(
    entries: Sequence[LineageEntry], fetch: Callable[[str, int], bytes | None]
) -> ArtifactChecker:
    """An artifact checker for models held by a remote service.

    ``model_saved`` paths are relative to the service's workspace, which a reviewer usually
    cannot read; `fetch(run_id, version)` downloads the model instead (e.g. from
    ``/v1/runs/{run_id}/models/{version}/admin``), returning None when the service has none.
    """
    located: dict[str, tuple[str, int]] = {}
    for entry in entries:
        if entry.kind == "model_saved" and entry.run_id is not None:
            p = payload_of(entry)
            if isinstance(p.get("path"), str) and isinstance(p.get("version"), int):
                located[p["path"]] = (entry.run_id, p["version"])

    def check(path: str) -> str | None:
        where = located.get(path)
        data = fetch(*where) if where is not None else None
        return hashlib.sha256(data).hexdigest() if data is not None else None

    return check


def _bad_entry_context(entries: Sequence[LineageEntry], report: VerifyReport) -> str:
    pos = (report.bad_seq or 0) - 1
    if 0 <= pos < len(entries) and entries[pos].seq == report.bad_seq:
        entry = entries[pos]
        run = f"run {entry.run_id}" if entry.run_id else "no run"
        return (
            f"entry {entry.seq} is a {entry.kind} entry ({run}) by {entry.author}, "
            f"written {entry.created_at}"
        )
    return ""


def verify(
    entries: Sequence[LineageEntry],
    keys: Mapping[str, str],
    artifact_root: Path | None = None,
    *,
    artifact_checker: ArtifactChecker | None = None,
) -> tuple[bool, RenderableType]:
    """`fedsilo lineage verify`: chain, every signature and every stored model's sha256.

    Parameters
    ----------
    entries
        The whole ledger from seq 1, in stored order.
    keys
        Hex public keys, ``{"service": ..., "silo:<name>": ...}``.
    artifact_root
        The service workspace that ``model_saved`` paths are relative to; None skips the
        artifact check unless `artifact_checker` is given (e.g. `fetched_artifact_checker`).

    Returns
    -------
    (ok, renderable)
        ok is False when any check fails; the renderable names the first bad entry and why.
    """
    checker = artifact_checker
    if checker is None and artifact_root is not None:
        checker = directory_artifact_checker(artifact_root)
    report = verify_chain(entries, parse_keys(keys), checker)
    n_models = sum(1 for e in entries if e.kind == "model_saved")
    if checker is None:
        artifacts = f"{n_models} model artifacts NOT checked (give the service workspace)"
    elif report.ok:
        artifacts = f"{n_models} model artifacts match their sha256"
    else:
        artifacts = "model artifacts checked up to the first bad entry"
    if report.ok:
        return True, Group(Text(str(report), style="bold green"), Text(artifacts))
    lines = [Text(f"ledger INVALID at entry {report.bad_seq}: {report.reason}", style="bold red")]
    context = _bad_entry_context(entries, report)
    if context:
        lines.append(Text(context))
    lines.append(Text(f"entries 1..{report.head_seq} verified; {artifacts}"))
    return False, Group(*lines)


def _jsonl_lines(file: Path) -> list[str]:
    """A silo's JSON Lines file split on "\\n" only: JSON keeps U+2028 and U+0085 raw inside
    strings, where `str.splitlines` would cut a record in two.

    Raises
    ------
    OSError
        If the file cannot be read.
    LineageReviewError
        If it is not UTF-8 (named by file and line).
    """
    data = file.read_bytes()
    try:
        return data.decode("utf-8").split("\n")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise LineageReviewError(
            f"{file} line {line} is not UTF-8 (byte {exc.start}: {exc.reason}); the file was "
            "cut or edited"
        ) from exc


def load_silo_records(path: Path) -> list[SiloRecord]:
    """A silo's own copy: a workspace folder (``lineage/records.jsonl``) or the file itself.

    Raises
    ------
    LineageReviewError
        If the file is missing, or a line is not a `SiloRecord` (named by line number).
    """
    path = Path(path)
    file = path / SILO_RECORDS if path.is_dir() else path
    if path.is_dir() and not file.is_file() and (path / SILO_RECORDS.name).is_file():
        file = path / SILO_RECORDS.name
    try:
        lines = _jsonl_lines(file)
    except OSError as exc:
        raise LineageReviewError(
            f"cannot read the silo's copy {file}: {exc}; pass the silo workspace folder "
            f"(holding {SILO_RECORDS}) or the records file"
        ) from exc
    records = []
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            records.append(SiloRecord.model_validate_json(line))
        except ValidationError as exc:
            raise LineageReviewError(
                f"{file} line {lineno} is not a silo lineage record (statement, signature, "
                f"receipt): {exc.errors()[0]['msg']}; the file was cut or edited"
            ) from exc
    return records


def verify_silo_copy(
    silo_records_path: Path, entries: Sequence[LineageEntry], keys: Mapping[str, str]
) -> tuple[bool, RenderableType]:
    """`fedsilo lineage verify --silo-copy DIR`: compare a silo's receipts with the ledger.

    Returns
    -------
    (ok, renderable)
        ok is False when the service dropped or rewrote an entry the silo wrote, a receipt does
        not verify with the service key, or the ledger attributes to the silo an entry it
        never submitted; every discrepancy is listed, earliest first.
    """
    records = load_silo_records(silo_records_path)
    service_key = parse_keys(keys).get(SERVICE_AUTHOR)
    report = cross_check(records, entries, service_public_key=service_key)
    authors = sorted({r.statement.author for r in records}) or ["(no records)"]
    head = Text(f"silo copy {silo_records_path} of {', '.join(authors)}: ")
    if service_key is None:
        head.append("receipt signatures NOT checked (no service key); ", style="yellow")
    if report.ok:
        head.append(str(report), style="bold green" if records else "yellow")
        return True, head
    lines = [head.append(f"MISMATCH ({len(report.problems)} problems)", style="bold red")]
    lines += [Text(f"  {problem}") for problem in report.problems]
    return False, Group(*lines)


def load_silo_checkpoints(path: Path) -> list[AnchoredCheckpoint]:
    """The checkpoints a silo countersigned (``lineage/checkpoints.jsonl`` in its workspace);
    empty when the silo kept none (an agent older than checkpoints).

    Raises
    ------
    LineageReviewError
        If a line is not a countersigned checkpoint (named by line number).
    """
    path = Path(path)
    if not path.is_dir():
        path = path.parent.parent if path.parent.name == "lineage" else path.parent
    file = path / SILO_CHECKPOINTS
    if not file.is_file():
        return []
    try:
        lines = _jsonl_lines(file)
    except OSError as exc:
        raise LineageReviewError(f"cannot read the silo's checkpoints {file}: {exc}") from exc
    anchored = []
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            anchored.append(AnchoredCheckpoint.model_validate_json(line))
        except ValidationError as exc:
            raise LineageReviewError(
                f"{file} line {lineno} is not a countersigned ledger checkpoint: "
                f"{exc.errors()[0]['msg']}; the file was cut or edited"
            ) from exc
    return anchored


def verify_silo_copies(
    paths: Sequence[Path], entries: Sequence[LineageEntry], keys: Mapping[str, str]
) -> tuple[bool, list[RenderableType], list[AnchoredCheckpoint]]:
    """Each silo copy's receipts against the ledger (`verify_silo_copy`), and the checkpoints
    the silos countersigned, pooled for `verify_anchors`.

    A workspace that kept countersigned checkpoints but never authored an entry (no
    ``lineage/records.jsonl``) only contributes its checkpoints.
    """
    ok = True
    shown: list[RenderableType] = []
    anchors: list[AnchoredCheckpoint] = []
    for path in paths:
        try:
            kept = load_silo_checkpoints(path)
            anchors += kept
            if kept and Path(path).is_dir() and not (Path(path) / SILO_RECORDS).is_file():
                shown.append(Text(f"silo copy {path}: no receipts; {len(kept)} checkpoints"))
                continue
            copy_ok, copy_shown = verify_silo_copy(path, entries, keys)
        except LineageReviewError as exc:
            copy_ok = False
            copy_shown = Text(f"silo copy unreadable: {exc}", style="bold red")
        ok = ok and copy_ok
        shown.append(copy_shown)
    return ok, shown, anchors


def anchor_problems(
    entries: Sequence[LineageEntry],
    keys: Mapping[str, str],
    *,
    silo_checkpoints: Sequence[AnchoredCheckpoint] = (),
    export_checkpoints: Sequence[AnchoredCheckpoint] = (),
) -> tuple[AnchorReport, list[str]]:
    """`check_anchors` over both sources pooled, and every problem found (`verify_anchors`):
    countersignatures that do not count (silo copies, then the export), then the checkpoints
    the ledger contradicts."""
    parsed = parse_keys(keys)
    merged = merge_checkpoints([list(silo_checkpoints), list(export_checkpoints)])
    report = check_anchors(entries, merged, parsed)
    problems = countersignature_problems(silo_checkpoints, parsed)
    problems += countersignature_problems(export_checkpoints, parsed, source="export")
    return report, problems + list(report.problems)


def verify_anchors(
    entries: Sequence[LineageEntry],
    keys: Mapping[str, str],
    *,
    silo_checkpoints: Sequence[AnchoredCheckpoint] = (),
    export_checkpoints: Sequence[AnchoredCheckpoint] = (),
) -> tuple[bool, RenderableType]:
    """Check the ledger against the latest countersigned checkpoints (truncation, rewrites).

    Parameters
    ----------
    silo_checkpoints
        From the silos' own copies: a countersignature there that does not verify with the
        silo's key on record is itself a problem (the key was replaced).
    export_checkpoints
        From the export or the service: only their valid countersignatures make them anchors;
        one that does not verify is a problem (the export was edited).

    Returns
    -------
    (ok, renderable)
        ok is False when the ledger ends before a checkpoint's height or an entry's hash
        differs from a checkpoint's head (countersigned, or signed by the service key on
        record), or a checkpoint is not signed by that key; every such checkpoint is named
        with its signers.
    """
    report, problems = anchor_problems(
        entries, keys, silo_checkpoints=silo_checkpoints, export_checkpoints=export_checkpoints
    )
    if not problems:
        style = "bold green" if report.anchors else "yellow"
        return True, Text(str(report), style=style)
    lines = [Text(f"ledger INVALID: {len(problems)} checkpoint problem(s)", style="bold red")]
    lines += [Text(f"  {problem}") for problem in problems]
    return False, Group(*lines)
