"""`fedsilo lineage ...` and `fedsilo report`: the compliance reviewer's commands."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console, RenderableType

from flows.cli.common import ServiceUrls, TokenFileOpt, TokenOpt, coordinator, fail
from flows.cli.errors import FAILED, err_console, one_line
from flows.cli.output import JsonOpt, emit_json, out, resolve_prefix, say
from schemas.lineage import LineageError

lineage_app = typer.Typer(
    help="Review the tamper-evident lineage ledger: verify, show, contributions, export.",
    no_args_is_help=True,
)


def _ledger(
    service_url: list[str], token: str | None, token_file: Path | None, export: Path | None
):  # type: ignore[no-untyped-def]
    """The ledger (entries, checkpoints) to read, unverified: from an export file (offline,
    no token needed) or from the service."""
    from flows.lineage_cmds import load_export_file
    from schemas.ledger_export import load_ledger_export

    try:
        if export is not None:
            return load_export_file(export)
        client = coordinator(service_url, token, token_file)
        return load_ledger_export(client.ledger_export())
    except LineageError as exc:
        # a damaged or truncated record is a verification failure, said plainly (exit 1);
        # an unreadable file or an unreachable service goes to the central error line
        err_console.print(f"ledger INVALID: {one_line(str(exc))}")
        raise typer.Exit(FAILED) from exc


def _ledger_export(
    service_url: list[str], token: str | None, token_file: Path | None, export: Path | None
):  # type: ignore[no-untyped-def]
    """The ledger (entries, checkpoints) and the author keys to verify it with: the export's
    keys file, else the service's keys (`_export_keys`)."""
    if export is None:
        book = _ledger(service_url, token, token_file, None)
        return book, coordinator(service_url, token, token_file).ledger_keys()
    keys = _export_keys(export, service_url, token, token_file)
    return _ledger(service_url, token, token_file, export), keys


def keys_path(export: Path) -> Path:
    """Where `lineage export --format ledger` writes the export's author keys."""
    return export.with_suffix(".keys.json")


def _export_keys(
    export: Path, service_url: list[str], token: str | None, token_file: Path | None
) -> dict[str, str]:
    """An export's author keys from FILE.keys.json; from the service only when a token was
    given (those keys only show the service's records agree with themselves). Without either,
    the signatures cannot be checked: exit 2 saying how to get the keys, asking for no token."""
    keys_file = keys_path(export)
    if keys_file.exists():
        return _keys_file(keys_file)
    if not (token or token_file):
        raise fail(
            f"{keys_file} not found: the signatures in {export} cannot be verified without its "
            "authors' public keys (the chain alone does not show who wrote an entry). Put the "
            "keys file that `fedsilo lineage export --format ledger` wrote beside the export "
            "there, or give --token-file (and --service-url) to fetch the keys from the service"
        )
    err_console.print(f"note: {keys_file} not found: verifying with the service's author keys")
    return coordinator(service_url, token, token_file).ledger_keys()


def _keys_file(path: Path) -> dict[str, str]:
    """The public keys written beside an export (``{"service": hex, "silo:<name>": hex}``).

    Raises
    ------
    LineageReviewError
        If the file is not that JSON object, naming the file (and the line of a JSON error).
    """
    from flows.lineage_cmds import LineageReviewError, parse_keys

    hint = "write it again with `fedsilo lineage export --format ledger`"
    try:
        keys = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        where = f" line {exc.lineno}" if isinstance(exc, json.JSONDecodeError) else ""
        raise LineageReviewError(f"{path}{where}: not a JSON keys file ({exc}); {hint}") from exc
    if not isinstance(keys, dict):
        raise LineageReviewError(
            f"{path}: not a JSON object of signer -> hex public key ({type(keys).__name__}); {hint}"
        )
    try:
        parse_keys(keys)
    except LineageReviewError as exc:
        raise LineageReviewError(f"{path}: {exc}") from exc
    return keys


ExportOpt = Annotated[
    Path | None,
    typer.Option(
        "--export",
        help="Verify an exported ledger file (JSON Lines) offline instead of the service's; "
        "the author keys are read from FILE.keys.json (written beside it by `fedsilo lineage "
        "export --format ledger`), or from the service when that file is missing and a "
        "token is given.",
    ),
]
ReadExportOpt = Annotated[
    Path | None,
    typer.Option(
        "--export",
        help="Read this exported ledger file (JSON Lines, from `fedsilo lineage export "
        "--format ledger`) instead of asking the service: no token or service needed; "
        "nothing is verified (that is `fedsilo lineage verify`).",
    ),
]
SiloCopyOpt = Annotated[
    list[Path] | None,
    typer.Option(
        "--silo-copy",
        help="A silo's workspace (or its lineage/records.jsonl) to cross-check against "
        "the ledger: its receipts and the checkpoints it countersigned. Repeat per silo.",
    ),
]
ArtifactsOpt = Annotated[
    Path | None,
    typer.Option(
        "--artifacts",
        help="Service workspace holding models/ to re-hash (defaults to "
        "downloading each model from the service).",
    ),
]


@lineage_app.command("verify")
def lineage_verify(
    service_url: ServiceUrls = ["http://127.0.0.1:8700"],
    token: TokenOpt = None,
    token_file: TokenFileOpt = None,
    export: ExportOpt = None,
    artifacts: ArtifactsOpt = None,
    silo_copy: SiloCopyOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Re-check the hash chain, every signature and every model file's sha256; exit 1 and name
    the first bad entry if anything was altered. Then check the ledger against the latest
    countersigned checkpoints (from the export or service, and from each --silo-copy): a
    ledger that ends before a countersigned height, or whose entry hash differs from a
    countersigned head, was cut or rewritten (service-only entries included). With
    --silo-copy, also check that the ledger holds exactly what that silo signed and was given
    receipts for."""
    from flows import lineage_cmds

    book, keys = _ledger_export(service_url, token, token_file, export)
    entries = book.entries
    checker = None
    if artifacts is None and export is None:
        client = coordinator(service_url, token, token_file)
        checker = lineage_cmds.fetched_artifact_checker(entries, client.download_model)
    ok, shown = lineage_cmds.verify(entries, keys, artifacts, artifact_checker=checker)
    copies_ok, copies_shown, silo_checkpoints = lineage_cmds.verify_silo_copies(
        silo_copy or [], entries, keys
    )
    anchors_ok, anchors_shown = lineage_cmds.verify_anchors(
        entries, keys, silo_checkpoints=silo_checkpoints, export_checkpoints=book.checkpoints
    )
    all_ok = ok and copies_ok and anchors_ok
    hashed = _hashed_note(entries, artifacts, downloaded=checker is not None)
    if as_json:
        emit_json(
            {
                "ok": all_ok,
                "entries": len(entries),
                "chain": {"ok": ok, "detail": _plain(shown)},
                "models_hashed": hashed,
                "silo_copies": {"ok": copies_ok, "detail": [_plain(c) for c in copies_shown]},
                "anchors": {"ok": anchors_ok, "detail": _plain(anchors_shown)},
            }
        )
    else:
        for renderable in (shown, *copies_shown, anchors_shown):
            out.print(renderable)
        out.print(hashed, markup=False, highlight=False)
    raise typer.Exit(0 if all_ok else FAILED)


def _hashed_note(entries, artifacts: Path | None, *, downloaded: bool) -> str:  # type: ignore[no-untyped-def]
    """What the model check hashed, said plainly: the files at the ledger's paths (with
    --artifacts), or the service's stored copies (downloaded): then the files on disk were
    not checked, and how to check them."""
    n = sum(1 for e in entries if e.kind == "model_saved")
    if artifacts is not None:
        return f"models hashed: the {n} model files at the paths the ledger names under {artifacts}"
    how = (
        "the model files on disk were NOT checked: give --artifacts SERVICE_WORKSPACE (the "
        "service workspace holding models/) to re-hash the files at the paths the ledger names"
    )
    if downloaded:
        return (
            f"models hashed: the service's stored copies of {n} model versions (downloaded "
            f"by the admin API), not the files at the paths the ledger names; {how}"
        )
    return f"models hashed: none; {how}"


def _plain(renderable: RenderableType) -> list[str]:
    """A renderable's lines as plain text (for --json)."""
    console = Console(file=io.StringIO(), width=400, record=True, markup=False)
    console.print(renderable)
    return [line.rstrip() for line in console.export_text().splitlines() if line.strip()]


@lineage_app.command("reinstall-ledger-guard")
def reinstall_ledger_guard(
    database_url: Annotated[
        str,
        typer.Option(
            help="The service's SQLAlchemy URL (default: FEDSILO_SERVICE_DATABASE_URL, else "
            "the SQLite file in --workspace)."
        ),
    ] = "",
    workspace: Annotated[
        Path | None, typer.Option(help="Service workspace (FEDSILO_SERVICE_WORKSPACE).")
    ] = None,
) -> None:
    """Reinstall the ledger's append-only triggers, after investigating why they were gone.

    The service refuses to start while one is missing; first run `fedsilo lineage verify`
    with every silo's copy to learn what was changed while they were down."""
    from aggregation.service import ledger_guard
    from aggregation.service.db import make_engine
    from aggregation.service.settings import ServiceSettings

    settings = ServiceSettings(workspace=workspace) if workspace else ServiceSettings()
    url = database_url or settings.resolved_database_url()
    engine = make_engine(url)
    try:
        with engine.begin() as conn:
            gone = ledger_guard.missing(conn)
            ledger_guard.install(conn)
            still = ledger_guard.missing(conn)
    finally:
        engine.dispose()
    if still:
        err_console.print(f"triggers still missing: {', '.join(still)}")
        raise typer.Exit(FAILED)
    was = f"were missing: {', '.join(gone)}" if gone else "none was missing"
    say(f"ledger append-only triggers reinstalled ({was})")


@lineage_app.command("show")
def lineage_show(
    run_id: Annotated[str, typer.Argument(help="Run id, or a unique prefix of one.")],
    service_url: ServiceUrls = ["http://127.0.0.1:8700"],
    token: TokenOpt = None,
    token_file: TokenFileOpt = None,
    export: ReadExportOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """A run's lineage as a timeline: config, silos, validation, updates, aggregates, models,
    then the run's ledger checkpoints and which silos countersigned them."""
    from flows import lineage_cmds
    from flows.lineage_tables import run_ids, show_run_json

    book = _ledger(service_url, token, token_file, export)
    run_id = resolve_prefix(run_id, run_ids(book.entries), "run")
    if as_json:
        emit_json(show_run_json(book.entries, book.checkpoints, run_id))
        return
    out.print(lineage_cmds.show_run(book.entries, run_id))
    out.print(lineage_cmds.checkpoints_table(book.checkpoints, run_id))


@lineage_app.command("contributions")
def lineage_contributions(
    silo: Annotated[str, typer.Argument(help="Silo name (an unknown one is an error).")],
    service_url: ServiceUrls = ["http://127.0.0.1:8700"],
    token: TokenOpt = None,
    token_file: TokenFileOpt = None,
    export: ReadExportOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Every model that silo's data contributed to (for data-deletion and consent questions)."""
    from dataclasses import asdict

    from flows import lineage_cmds
    from flows.lineage_tables import require_silo

    entries = _ledger(service_url, token, token_file, export).entries
    name = require_silo(entries, silo)
    rows = lineage_cmds.contributions(entries, name)
    if as_json:
        emit_json({"silo": name, "contributions": [asdict(row) for row in rows]})
        return
    out.print(lineage_cmds.contributions_table(rows, name))


@lineage_app.command("export")
def lineage_export(
    run_id: Annotated[
        str | None,
        typer.Argument(
            help="openlineage: the run (id, or a unique prefix of one). ledger: none, the "
            "ledger is exported whole."
        ),
    ] = None,
    out: Annotated[Path, typer.Option(help="File to write.")] = Path("lineage.jsonl"),
    format: Annotated[
        str,
        typer.Option(
            help="'openlineage' (one run's RunEvents) or 'ledger' (the whole signed ledger, "
            "every run, verifiable offline)."
        ),
    ] = "openlineage",
    service_url: ServiceUrls = ["http://127.0.0.1:8700"],
    token: TokenOpt = None,
    token_file: TokenFileOpt = None,
) -> None:
    """Export lineage: one run's OpenLineage RunEvents for Marquez and friends, or the signed
    ledger.

    --format ledger takes no RUN_ID: the ledger is one hash chain covering every run, and only
    the whole chain verifies, so it is written whole (read one run from it with `fedsilo
    lineage show RUN_ID --export FILE`). The authors' public keys go beside it, in
    FILE.keys.json (same name, suffix .keys.json), where `fedsilo lineage verify --export
    FILE` reads them offline."""
    if format not in ("openlineage", "ledger"):
        raise typer.BadParameter("format must be 'openlineage' or 'ledger'", param_hint="--format")
    if format == "ledger" and run_id is not None:
        raise fail(
            f"--format ledger exports the whole ledger (one hash chain of every run, verifiable "
            f"only whole), not run {run_id!r}: drop RUN_ID, then read that run from the file "
            f"with `fedsilo lineage show {run_id} --export {out}`"
        )
    if format == "openlineage" and run_id is None:
        raise fail("--format openlineage exports one run: give RUN_ID (`fedsilo runs list`)")
    client = coordinator(service_url, token, token_file)
    if run_id is None:  # format ledger
        keys = keys_path(out)
        out.write_text(client.ledger_export())
        keys.write_text(json.dumps(client.ledger_keys(), indent=2))
        say(f"ledger written to {out} (keys in {keys})")
        return
    from flows.lineage_tables import run_ids
    from flows.openlineage_export import write_openlineage
    from schemas.ledger_export import load_export

    entries = load_export(client.ledger_export())
    run_id = resolve_prefix(run_id, run_ids(entries), "run")
    path = write_openlineage(entries, run_id, out)
    say(f"OpenLineage events for run {run_id} written to {path}")


def report(
    run_id: Annotated[str, typer.Argument(help="Run id, or a unique prefix of one.")],
    out: Annotated[Path, typer.Option(help="Folder for the HTML report.")] = Path("report"),
    service_url: ServiceUrls = ["http://127.0.0.1:8700"],
    token: TokenOpt = None,
    token_file: TokenFileOpt = None,
    artifacts: ArtifactsOpt = None,
    export: Annotated[
        Path | None,
        typer.Option(
            "--export",
            help="Report from an exported ledger file (JSON Lines, with its checkpoints) "
            "instead of the service's; author keys are read from FILE.keys.json, or from the "
            "service when that file is missing and a token is given.",
        ),
    ] = None,
    prefect_ui: Annotated[
        str | None, typer.Option(help="Prefect UI address for run links.")
    ] = None,
    rehash: Annotated[
        bool,
        typer.Option(
            help="Re-hash the run's model files (from --artifacts, else downloaded from the "
            "service) and show each recomputed sha256 beside the ledger's."
        ),
    ] = True,
    regression_threshold: Annotated[
        float,
        typer.Option(
            min=0.0, help="Call out a silo whose AUC or accuracy fell from its best by more."
        ),
    ] = 0.1,
    data_docs: Annotated[
        list[str] | None,
        typer.Option(
            "--data-docs",
            metavar="SILO=LOCATION",
            help="Link a silo's Great Expectations data docs: its workspace or data_docs "
            "folder, or an http(s) address. Repeat per silo.",
        ),
    ] = None,
    silo_copy: SiloCopyOpt = None,
) -> None:
    """Write a self-contained HTML compliance report of a run: participants, fingerprints and
    validation, per-round metric plots and regressions, privacy budget, model card, chain
    verification, the check against the countersigned checkpoints (as `fedsilo lineage
    verify`) and re-hashed model files.

    With --silo-copy (once per silo), the silos' own copies are cross-checked as `fedsilo
    lineage verify --silo-copy` does: without them, a cut of the newest entries by whoever
    holds the ledger cannot be detected, and the report says so. The report is always
    written; the command then exits 1 when its verdict is a failure (ledger not verified, a
    model that does not match), as `fedsilo lineage verify` does."""
    from flows.lineage_tables import run_ids
    from flows.report import verify_command, write_report_verdict
    from flows.report_checks import model_source, parse_locations

    if export is not None and rehash and artifacts is None and not (token or token_file):
        raise fail(
            f"--export {export} is read offline, but re-hashing the run's models needs them: "
            "give --artifacts WORKSPACE (the service workspace holding models/), --no-rehash, "
            "or --token-file (and --service-url) to download them from the service"
        )
    book, keys = _ledger_export(service_url, token, token_file, export)
    entries = book.entries
    run_id = resolve_prefix(run_id, run_ids(entries), "run")
    try:
        locations = parse_locations(data_docs or [])
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--data-docs") from exc
    checker, source = (None, None)
    if rehash:
        client = None if artifacts else coordinator(service_url, token, token_file)
        checker, source = model_source(entries, artifacts, client)
    hint = verify_command(
        export=export, service_urls=service_url, token_file=token_file, artifacts=artifacts
    )
    path, verdict = write_report_verdict(
        entries,
        keys,
        run_id,
        out,
        prefect_ui_url=prefect_ui,
        artifact_checker=checker,
        artifact_source=source,
        artifacts_on_disk=artifacts is not None,
        regression_threshold=regression_threshold,
        data_docs_locations=locations,
        checkpoints=book.checkpoints,
        silo_copies=silo_copy or [],
        verify_hint=hint,
    )
    if not verdict.ok:
        err_console.print(f"{verdict.said} (report written to {path})", markup=False)
        raise typer.Exit(FAILED)
    say(f"report written to {path}")
    if not silo_copy:
        say(
            "note: silos' copies not checked, so a cut of the newest entries by the ledger's "
            f"holder cannot be detected; check with: {hint}"
        )
