"""The coordinator's admin token for a flow run: from a private file or a Prefect Secret block.

Prefect stores every flow run's parameters in its database and shows them in its UI and API, so
the token itself is never a parameter of `federated_training`. The flow gets the *path* of a
file only its owner can read (`admin_token_file`) or the *name* of a Prefect `Secret` block
(`admin_token_block`, stored encrypted by Prefect) and reads the token inside the run. A token
given as a value on the command line travels through `private_token_file`: a 0600 file in a
0700 folder that is removed when the run ends.
"""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import cast

from flows.exceptions import AdminTokenError
from schemas.token_format import token_problem


def read_token_file(path: str | Path) -> str:
    """The token in `path`, refusing a file that users other than its owner may open.

    Parameters
    ----------
    path
        A regular file holding the token on one line (surrounding whitespace is dropped).

    Raises
    ------
    AdminTokenError
        The file is missing, not a regular file, unreadable, empty, not one line of printable
        ASCII, or its mode gives the group or other users any access; the message names the
        file and the fix, never the token.
    """
    where = Path(path)
    try:
        fd = os.open(where, os.O_RDONLY | os.O_NONBLOCK)  # a FIFO must not hang the run
    except FileNotFoundError:
        raise AdminTokenError(f"admin token file {where} does not exist") from None
    except OSError as exc:
        raise AdminTokenError(f"cannot open admin token file {where}: {exc.strerror}") from None
    with os.fdopen(fd, "rb") as fh:
        mode = os.fstat(fh.fileno()).st_mode  # of the file opened, not of a path swapped since
        if not stat.S_ISREG(mode):
            raise AdminTokenError(f"admin token file {where} is not a regular file")
        if mode & 0o077:
            raise AdminTokenError(
                f"admin token file {where} has mode {stat.S_IMODE(mode):04o}, so other users "
                f"can read it; restrict it to its owner with `chmod 600 {where}`"
            )
        raw = fh.read()
    problem = token_problem(raw)
    if problem:
        raise AdminTokenError(f"admin token file {where} {problem}")
    return raw.decode("ascii").strip()


def read_token_block(name: str) -> str:
    """The token in the Prefect `Secret` block `name` (its value verbatim, not JSON-decoded)."""
    from prefect.blocks.system import Secret

    try:
        # Prefect's sync/async dual `load` types as either; called from sync code it is sync
        block = cast("Secret[str]", Secret.load(name))
    except ValueError:  # Prefect's answer for a missing block document
        raise AdminTokenError(
            f"no Prefect Secret block named {name!r}; create it with "
            f"`prefect block create secret` or Secret(value=...).save({name!r})"
        ) from None
    value = block.value.get_secret_value()
    if not isinstance(value, str) or not value.strip():
        raise AdminTokenError(f"Prefect Secret block {name!r} does not hold a token string")
    problem = token_problem(value)
    if problem:
        raise AdminTokenError(f"Prefect Secret block {name!r} {problem}")
    return value.strip()


def resolve_admin_token(token_file: str | None, token_block: str | None) -> str:
    """The token from exactly one of a file path or a Secret block name."""
    if token_file and token_block:
        raise AdminTokenError(
            "give admin_token_file or admin_token_block, not both: "
            f"{token_file} and Secret block {token_block!r}"
        )
    if token_file:
        return read_token_file(token_file)
    if token_block:
        return read_token_block(token_block)
    raise AdminTokenError(
        "the coordinator flow needs admin_token_file (a 0600 file's path) or admin_token_block "
        "(a Prefect Secret block's name); the token itself is never a flow parameter"
    )


@contextmanager
def private_token_file(token: str) -> Iterator[Path]:
    """A 0600 file holding `token` inside a fresh 0700 folder; both are removed on exit."""
    folder = Path(tempfile.mkdtemp(prefix="fedsilo-token-"))  # mkdtemp creates it 0700
    try:
        path = folder / "admin.token"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(token + "\n")
        yield path
    finally:
        shutil.rmtree(folder, ignore_errors=True)
