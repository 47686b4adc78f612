"""Backup and restore of the hub: database, keys and models, taken while the service runs.

A backup folder holds ``database/`` (one consistent snapshot, `backup_db`), ``workspace/``
(the service's keys, admin token and the model files the snapshot's ledger names),
``external/`` (TLS and signing files kept outside the workspace) and ``manifest.json``: the
sha256 of every file, where each goes back to, the schema revision and the ledger head at the
backup's instant. Restore refuses a folder whose files do not match the manifest, and a
target that already holds state unless forced; afterwards the restored ledger is verified
(chain, signatures, model files) and must end at the manifest's head.

Model files are immutable once their round committed, so copying the files the snapshot's
``model_saved`` entries name (and checking their sha256) is consistent with the snapshot.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from alembic.script import ScriptDirectory
from alembic.script.revision import ResolutionError
from alembic.util import CommandError
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from aggregation import backup_db
from aggregation.backup_db import BackupError
from aggregation.service.db import make_engine, make_sessionmaker, transaction
from aggregation.service.federations import silo_keys
from aggregation.service.keys import load_service_signer
from aggregation.service.ledger import iter_records
from aggregation.service.migrate import alembic_config
from aggregation.service.secure_rounds import restart_open_rounds
from aggregation.service.settings import ServiceSettings
from schemas.ledger_verify import VerifyReport, directory_artifact_checker, verify_chain

__all__ = ["BackupError", "backup", "restore", "verify_backup", "verify_ledger"]

MANIFEST = "manifest.json"
FORMAT = 1
# settings fields naming files that may live outside the workspace (TLS, signing key)
_EXTERNAL = (
    "tls_cert",
    "tls_key",
    "client_ca",
    "collective_cert",
    "collective_key",
    "collective_ca",
    "signing_key_file",
    "admin_token_file",
)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _copy(src: Path, out: Path, rel: str, restore_to: str) -> dict[str, Any]:
    target = out / rel
    if src != target:
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, target)
    return {"path": rel, "sha256": _sha256(target), "size": target.stat().st_size, "to": restore_to}


def _workspace_files(settings: ServiceSettings, models: list[dict[str, Any]]) -> list[Path]:
    """Keys, admin token and the snapshot's model files, relative to the workspace."""
    ws = settings.workspace
    keys = ws / "keys"
    rels = (
        [p.relative_to(ws) for p in sorted(keys.rglob("*")) if p.is_file()] if keys.is_dir() else []
    )
    if (ws / "admin.token").is_file():
        rels.append(Path("admin.token"))
    for entry in models:
        path = ws / entry["path"]
        if not path.is_file():
            raise BackupError(f"model file {path} (ledger: {entry['path']}) is missing")
        if _sha256(path) != entry["sha256"]:
            raise BackupError(
                f"model file {path} does not match the sha256 its model_saved entry records; "
                "run `fedsilo lineage verify --artifacts WORKSPACE` to see which were altered"
            )
        rels.append(Path(entry["path"]))
    return rels


def backup(settings: ServiceSettings, out: Path) -> dict[str, Any]:
    """Write a backup of the hub described by `settings` to the empty folder `out`.

    Returns
    -------
    dict
        The manifest (also written as ``out/manifest.json``).

    Raises
    ------
    BackupError
        `out` is not empty, the database cannot be read, or a model file is missing or altered.
    """
    if out.exists() and any(out.iterdir()):
        raise BackupError(f"backup folder {out} is not empty: give a new folder")
    for name in _EXTERNAL:
        path: Path | None = getattr(settings, name)
        if path is not None and not path.is_file():
            option = "--" + name.replace("_", "-")
            raise BackupError(
                f"{option} {path} (FEDSILO_SERVICE_{name.upper()}) is not a file: the backup "
                "would leave out a file the service is configured with; give the path the "
                "service runs with"
            )
    try:
        return _write_backup(settings, out)
    except BaseException:
        shutil.rmtree(out, ignore_errors=True)  # it was empty: leave no half backup behind
        raise


def _write_backup(settings: ServiceSettings, out: Path) -> dict[str, Any]:
    (out / "database").mkdir(parents=True, exist_ok=True, mode=0o700)
    out.chmod(0o700)  # keys and the admin token are inside
    url = settings.resolved_database_url()
    db_file = "database/" + ("service.db" if backend_db(url) == "sqlite" else "postgres.dump")
    snap = backup_db.dump(url, out / db_file)
    files = [_copy(out / db_file, out, db_file, "database")]
    for rel in _workspace_files(settings, snap.models):
        files.append(_copy(settings.workspace / rel, out, f"workspace/{rel}", f"workspace:{rel}"))
    for name in _EXTERNAL:
        path = getattr(settings, name)
        if path is not None:  # each one is a file (`backup` checked)
            files.append(_copy(path, out, f"external/{name}/{path.name}", str(path.resolve())))
    manifest = {
        "format": FORMAT,
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "database": {"backend": snap.backend, "schema_revision": snap.revision},
        "ledger_head": {"seq": snap.head_seq, "entry_hash": snap.head_hash},
        "files": files,
    }
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def backend_db(url: str) -> str:
    return backup_db.backend_of(url)


def verify_backup(folder: Path) -> dict[str, Any]:
    """The manifest of `folder`, once every file it lists matches its sha256 and no file
    is there that it does not list; otherwise `BackupError` naming the first bad file."""
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
    except FileNotFoundError as exc:
        raise BackupError(f"{folder} has no {MANIFEST}: not a fedsilo backup") from exc
    except json.JSONDecodeError as exc:
        raise BackupError(f"{folder / MANIFEST} is not valid JSON: {exc}") from exc
    if manifest.get("format") != FORMAT:
        raise BackupError(f"{folder / MANIFEST}: unknown backup format {manifest.get('format')}")
    listed = set()
    for item in manifest["files"]:
        path = folder / item["path"]
        listed.add(path.resolve())
        if not path.resolve().is_relative_to(folder.resolve()):
            raise BackupError(f"{MANIFEST} names {item['path']}, outside the backup folder")
        if not path.is_file():
            raise BackupError(f"backup file {item['path']} is missing")
        if _sha256(path) != item["sha256"]:
            raise BackupError(
                f"backup file {item['path']} does not match its sha256 in {MANIFEST}: "
                "the backup was altered or damaged; restore another one"
            )
    extra = [
        p
        for p in folder.rglob("*")
        if p.is_file() and p.name != MANIFEST and p.resolve() not in listed
    ]
    if extra:
        raise BackupError(f"backup file {extra[0].relative_to(folder)} is not in {MANIFEST}")
    return dict(manifest)


def _occupied(settings: ServiceSettings, manifest: dict[str, Any]) -> list[str]:
    """What restoring would overwrite: existing database state, workspace or external files."""
    found = []
    if not backup_db.is_empty(settings.resolved_database_url()):
        found.append(f"database {settings.resolved_database_url().split('@')[-1]}")
    for name in ("keys", "models", "admin.token"):
        if (settings.workspace / name).exists():
            found.append(str(settings.workspace / name))
    for item in manifest["files"]:
        to = item["to"]
        if to.startswith("/") and Path(to).exists() and _sha256(Path(to)) != item["sha256"]:
            found.append(to)
    return found


def restore(
    settings: ServiceSettings,
    folder: Path,
    *,
    force: bool = False,
    notes: list[str] | None = None,
) -> VerifyReport:
    """Put the backup in `folder` back as the hub described by `settings` (service stopped).

    The database goes first, in one transaction: when it fails, nothing was changed (the
    database, keys, models and external files are as they were). Only then are the workspace
    files, staged next to the workspace beforehand, swapped in for its keys, models and admin
    token, and the external files written.

    An open secure-aggregation round starts its protocol again at the advertise stage
    (`secure_rounds.restart_open_rounds`): its silos went on past the backup's instant and
    may have erased that round's keys, so it cannot carry on at the saved stage. What was
    restarted is appended to `notes` (one line each) when given.

    Raises
    ------
    BackupError
        The backup does not verify or its schema is newer than this release; the target holds
        state and `force` is False; the database cannot be loaded (nothing changed); the
        restored ledger does not verify or does not end at the manifest's head.
    """
    manifest = verify_backup(folder)
    _require_known_schema(manifest)
    occupied = _occupied(settings, manifest)
    if occupied and not force:
        raise BackupError(
            f"restore target is not empty ({'; '.join(occupied)}); stop the service and give "
            "--force to replace it, or restore into a new workspace and database"
        )
    ws = settings.workspace
    ws.mkdir(parents=True, exist_ok=True, mode=0o700)
    staging = Path(tempfile.mkdtemp(prefix=".restoring-", dir=ws))  # same file system: renames
    try:
        database, external = _stage(manifest, folder, staging)
        try:
            backup_db.load(settings.resolved_database_url(), folder / database)
        except BackupError as exc:
            raise BackupError(
                f"{str(exc).rstrip('.')}. Nothing was changed: the database, keys and models "
                "are as they were"
            ) from exc
        _swap_in(ws, staging)
        for src, target in external:
            target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            shutil.copy2(src, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    report = verify_ledger(settings)
    head = manifest["ledger_head"]
    if not report.ok:
        raise BackupError(f"the restored ledger does not verify: {report}")
    if report.head_seq != head["seq"] or (head["seq"] and report.head_hash != head["entry_hash"]):
        raise BackupError(
            f"the restored ledger ends at entry {report.head_seq} ({report.head_hash[:16]}), "
            f"the manifest at {head['seq']} ({str(head['entry_hash'])[:16]})"
        )
    for run_id, number, stage in restart_secure_rounds(settings):
        if notes is not None:
            notes.append(
                f"round {number} of run {run_id} was open at secure-aggregation stage {stage}: "
                "its protocol starts again at advertise, the silos with new keys and masks"
            )
    return report


def _require_known_schema(manifest: dict[str, Any]) -> None:
    """Refuse, before anything changes, a backup made by a newer release: this one could not
    read (nor migrate) its schema. An older schema is fine: `serve` migrates it."""
    revision = manifest["database"].get("schema_revision")
    if revision is None:
        return
    scripts = ScriptDirectory.from_config(alembic_config("sqlite://"))
    try:
        scripts.get_revision(revision)
    except (CommandError, ResolutionError):
        heads = ", ".join(sorted(scripts.get_heads()))
        raise BackupError(
            f"the backup's database schema is at revision {revision}, which this release "
            f"(schema {heads}) does not know: restore it with the fedsilo release that made it"
        ) from None


def _stage(
    manifest: dict[str, Any], folder: Path, staging: Path
) -> tuple[str, list[tuple[Path, Path]]]:
    """Copy the backup's workspace files under `staging`; return the database file's path in
    the backup and the (source, target) of each external file still to be written."""
    database = ""
    external: list[tuple[Path, Path]] = []
    for item in manifest["files"]:
        src, to = folder / item["path"], item["to"]
        if to == "database":
            database = item["path"]
        elif to.startswith("workspace:"):
            target = staging / to.removeprefix("workspace:")
            target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            shutil.copy2(src, target)
        elif not (Path(to).is_file() and _sha256(Path(to)) == item["sha256"]):
            external.append((src, Path(to)))  # one already in place (a Secret mount) is left
    if not database:
        raise BackupError(f"{MANIFEST} lists no database file")
    return database, external


def _swap_in(ws: Path, staging: Path) -> None:
    """Replace the workspace's keys/ and models/ by the staged ones (no key or model from
    before survives) and its other files by the staged ones, each by a rename."""
    for name in ("keys", "models"):
        old = ws / name
        if old.exists():
            old.rename(staging / f"{name}.replaced")  # removed with the staging folder
        if (staging / name).exists():
            (staging / name).rename(old)
    for item in staging.iterdir():
        if item.name not in ("keys", "models") and not item.name.endswith(".replaced"):
            item.replace(ws / item.name)


def restart_secure_rounds(settings: ServiceSettings) -> list[tuple[str, int, str]]:
    """Restart every open secure round of the hub's database at the advertise stage (see
    `restore`); (run, round, stage it was at) for each."""
    engine = make_engine(settings.resolved_database_url())
    try:
        with engine.begin() as conn:
            return restart_open_rounds(conn)
    finally:
        engine.dispose()


def verify_ledger(settings: ServiceSettings) -> VerifyReport:
    """`lineage verify` on the hub's own database and workspace: chain, signatures (with the
    service key in the workspace or settings and the enrolled silos' keys) and model files."""
    engine = make_engine(settings.resolved_database_url())
    try:
        factory = make_sessionmaker(engine)
        with transaction(factory) as s:
            keys = silo_keys(s)
            entries = list(iter_records(s))
        signer = load_service_signer(
            settings.workspace,
            key_file=settings.signing_key_file,
            hook=settings.signer,
            create=False,  # verifying never makes a key: a missing one is named instead
        )
    finally:
        engine.dispose()
    public = {k: Ed25519PublicKey.from_public_bytes(bytes.fromhex(v)) for k, v in keys.items()}
    public["service"] = Ed25519PublicKey.from_public_bytes(signer.public_key_bytes())
    return verify_chain(entries, public, directory_artifact_checker(settings.workspace))
