"""Files only their owner may read: the silo's workspace, keys and anything derived from data.

Every process that writes fedsilo state (the silo agent, the aggregation service, the demo)
calls `owner_only_umask()` first, so each file it creates is 0600 and each folder 0700 even
when a library creates it (SQLite, Great Expectations, Prefect). Where a file is created
before that, or may already exist with looser bits, `write_private` and `restrict_tree` set
the modes explicitly.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

OWNER_ONLY_UMASK = 0o077
FILE_MODE = 0o600
DIR_MODE = 0o700


def owner_only_umask() -> int:
    """Make every file this process creates from now on 0600 and every folder 0700.

    Returns the previous umask (tests restore it).
    """
    return os.umask(OWNER_ONLY_UMASK)


def private_dir(path: Path) -> Path:
    """Create `path` and its missing parents as 0700 folders; make `path` itself 0700."""
    missing = [p for p in (path, *path.parents) if not p.exists()]
    for folder in reversed(missing):
        folder.mkdir(mode=DIR_MODE, exist_ok=True)
        os.chmod(folder, DIR_MODE)  # mkdir's mode is masked by the umask
    os.chmod(path, DIR_MODE)
    return path


def write_private(path: Path, data: bytes, durable: bool = False) -> None:
    """Write `data` to `path` atomically (a 0600 temporary file renamed over it).

    `durable`: also flush the file to disk before the rename and the folder after it. Without
    that a power cut can leave the new name on an empty or partial file (the rename reaches
    the disk before the data), which matters for state read back in a later round.

    A failure (a full disk, say) raises the `OSError` naming `path`: a failed write names no
    file, and whoever reads the error must know which one could not be written."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        _write_then_rename(tmp, path, data, durable)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)  # a partial file only holds space (and maybe secrets)
        exc.filename = str(path)
        raise


def _write_then_rename(tmp: Path, path: Path, data: bytes, durable: bool) -> None:
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, FILE_MODE)
    os.fchmod(fd, FILE_MODE)  # O_CREAT's mode does not apply to a file left by a crash
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
        if durable:
            fh.flush()
            os.fsync(fh.fileno())
    tmp.replace(path)
    if durable:
        folder = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(folder)
        finally:
            os.close(folder)


def restrict_tree(root: Path) -> None:
    """Make every folder under `root` (itself included) 0700 and every file 0600."""
    if not root.exists():
        return
    os.chmod(root, DIR_MODE if root.is_dir() else FILE_MODE)
    for folder, dirs, files in os.walk(root):
        for name in dirs:
            os.chmod(os.path.join(folder, name), DIR_MODE)
        for name in files:
            os.chmod(os.path.join(folder, name), FILE_MODE)


def erase(path: Path) -> bool:
    """Delete the file at `path` if it is there; True when it was."""
    try:
        path.unlink()
    except FileNotFoundError:
        return False
    return True
