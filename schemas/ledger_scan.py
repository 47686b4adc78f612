"""The expensive half of ledger verification: every entry's hash and signatures, in parallel.

Each entry's sha256 and Ed25519 signatures are independent of every other entry, so a large
ledger is cut into ranges scanned by forked child processes (or threads, when other threads
run). `schemas.ledger_verify.verify_chain` calls `first_scan_problem` and then names what
failed.
"""

from __future__ import annotations

import gc
import multiprocessing
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from multiprocessing.connection import Connection

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from schemas.lineage import (
    SERVICE_AUTHOR,
    LineageEntry,
    entry_signing_message,
    statement_message,
    verify_signature,
)

__all__ = ["PARALLEL_MIN_ENTRIES", "bad_signature", "first_scan_problem"]


def bad_signature(
    entry: LineageEntry, keys: dict[str, Ed25519PublicKey]
) -> tuple[str, Ed25519PublicKey | None] | None:
    """("author" or "service", the key tried) for the entry's first failing signature."""
    if entry.author != SERVICE_AUTHOR:
        key = keys.get(entry.author)
        msg = statement_message(
            run_id=entry.run_id, kind=entry.kind, payload=entry.payload, author=entry.author
        )
        if key is None or not verify_signature(key, entry.author_signature, msg):
            return "author", key
    key = keys.get(SERVICE_AUTHOR)
    msg = entry_signing_message(entry.entry_hash)
    if key is None or not verify_signature(key, entry.service_signature, msg):
        return "service", key
    return None


def _scan(
    entries: Sequence[LineageEntry], lo: int, hi: int, keys: dict[str, Ed25519PublicKey]
) -> int | None:
    """First position in [lo, hi) whose content hash or a signature fails, or None.

    The expensive per-entry work (sha256, Ed25519), independent of every other entry, so
    ranges can be scanned in parallel.
    """
    for pos in range(lo, hi):
        entry = entries[pos]
        if entry.recompute_hash() != entry.entry_hash or bad_signature(entry, keys):
            return pos
    return None


# Below this many entries a serial scan is quicker than starting workers.
PARALLEL_MIN_ENTRIES = 2000


def _scan_in_child(
    conn: Connection,
    entries: Sequence[LineageEntry],
    keys: dict[str, Ed25519PublicKey],
    lo: int,
    hi: int,
) -> None:
    # A short-lived child: no garbage collection, which would touch (and copy) every page.
    gc.disable()
    conn.send(_scan(entries, lo, hi, keys))
    conn.close()


def _scan_forked(
    entries: Sequence[LineageEntry], ranges: list[range], keys: dict[str, Ed25519PublicKey]
) -> list[int | None]:
    """Scan ranges[0] here and each other range in a forked child process (one per core).

    Processes rather than threads: hashing, message building and signature-string checks
    hold the GIL. A child that fails to answer has its range rescanned here.
    """
    context = multiprocessing.get_context("fork")
    children = []
    for part in ranges[1:]:
        receiver, sender = context.Pipe(duplex=False)
        # a forked child inherits its arguments without pickling; passed, not kept in the
        # module, so two verifications in threads of one process never swap entries
        args = (sender, entries, keys, part.start, part.stop)
        child = context.Process(target=_scan_in_child, args=args)
        child.start()
        sender.close()
        children.append((child, receiver, part))
    results = [_scan(entries, ranges[0].start, ranges[0].stop, keys)]
    for child, receiver, part in children:
        try:
            results.append(receiver.recv())
        except EOFError:  # the child died (e.g. killed for memory): do its share here
            results.append(_scan(entries, part.start, part.stop, keys))
        receiver.close()
        child.join()
    return results


def first_scan_problem(
    entries: Sequence[LineageEntry], stop: int, keys: dict[str, Ed25519PublicKey], workers: int
) -> int | None:
    """First position below `stop` whose hash or a signature fails, over `workers` cores."""
    if workers <= 1 or stop < PARALLEL_MIN_ENTRIES:
        return _scan(entries, 0, stop, keys)
    size = -(-stop // workers)
    ranges = [range(lo, min(lo + size, stop)) for lo in range(0, stop, size)]
    # Forking is only safe while no other thread might hold a lock the child would need.
    if "fork" in multiprocessing.get_all_start_methods() and threading.active_count() == 1:
        results = _scan_forked(entries, ranges, keys)
    else:
        # Ed25519 verification releases the GIL, so threads still share that part.
        with ThreadPoolExecutor(max_workers=workers) as pool:
            results = list(pool.map(lambda r: _scan(entries, r.start, r.stop, keys), ranges))
    return next((pos for pos in results if pos is not None), None)
