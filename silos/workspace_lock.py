"""One agent per silo workspace: an exclusive `flock` on ``WORKSPACE/agent.lock``.

Two agents on one workspace take the same round's tasks and erase each other's
secure-aggregation state; the second is refused at start instead. The lock belongs to the
open file, so the kernel drops it when the holder exits, however it exits (SIGKILL, a crash):
a lock file left behind is never stale. The holder writes its pid into the file so that the
refusal can name it. Commands that must not run beside the agent (`fedsilo silo
reset-privacy-budget`) hold the same lock while they work.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from silos.exceptions import SiloError

LOCK_FILE = "agent.lock"


class WorkspaceBusy(SiloError):
    """Another process (an agent, most likely) holds the silo's workspace."""

    def __init__(self, workspace: Path, pid: str) -> None:
        who = f"process {pid}" if pid else "another process"
        super().__init__(
            f"silo workspace {workspace} is in use by {who} (a silo agent on the same "
            f"silo.toml?): stop it first; {workspace / LOCK_FILE} names the holder"
        )
        self.workspace = workspace
        self.pid = pid


@contextmanager
def held(workspace: Path) -> Iterator[None]:
    """Hold `workspace` for the block; raise `WorkspaceBusy` at once if another process does."""
    workspace.mkdir(parents=True, exist_ok=True, mode=0o700)
    # os.open's descriptors are not inherited across exec: a child process never keeps it
    fd = os.open(workspace / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise WorkspaceBusy(
                workspace, os.read(fd, 32).decode(errors="replace").strip()
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # closing the only descriptor releases the lock
