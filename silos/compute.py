"""Where a silo computes: in the agent's own process, or on the silo's own Dask cluster.

A bank's transaction table often does not fit in one process's memory. ``[compute]`` in
silo.toml lets the operator point the agent at a Dask scheduler of the silo's own
(``dask_scheduler = "tcp://10.0.0.5:8786"``); without one, a table file larger than
``local_max_bytes`` gets a LocalCluster on this machine (loopback only, ``workers`` processes
of ``worker_memory_bytes`` each), so no single process ever holds the whole table. Smaller
tables stay on the pandas path, which is faster for them.

What runs on Dask (issue 20), when `uses_dask` says so for the training table
(`silos.dask_data`):

* the round's validation gate, partition by partition (`silos.chunked_gate`, called by
  `silos.round_gate`), with the table's fingerprint computed on the workers;
* local boosting in tree rounds (bagging, cyclic) through ``xgboost.dask`` and
  ``lightgbm.dask`` (`silos.dask_boost`, called by `silos.tree_round`);
* secure-hist runs: one `HistShard` per partition on its worker, vectors summed before
  masking (`silos.dask_hist`, called by `silos.hist_round`), byte-equal to the pandas path.

The held-out test rows come from ``[data] test_path`` and are scored in the agent's process (a
per-partition split is not built). Other round types (PyTorch, federation statistics,
personalisation, collective XGBoost) need the table in memory: a Dask silo declines those
runs, saying so.

The agent keeps one client per ``[compute]`` section for its lifetime (`shared_client`): a
secure-hist run's shards live on the workers between its steps, and a LocalCluster takes
seconds to start.

Dask is imported only when a silo actually uses it: a silo whose tables fit in memory never
pays for it (lean agents).

Example::

    [compute]
    dask_scheduler = "tcp://10.0.0.5:8786"   # optional: the silo's own cluster
    local_max_bytes = 2_000_000_000          # bigger table files go to a LocalCluster
    workers = 4
    worker_memory_bytes = 4_000_000_000
    partition_bytes = 64_000_000             # rows per partition, by bytes on disk
"""

from __future__ import annotations

import atexit
import threading
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from silos.exceptions import DataError, SiloConfigError

if TYPE_CHECKING:
    from distributed import Client

# a worker process holds Python, pandas, pyarrow and dask (about 180 MB) before any data
MIN_WORKER_MEMORY = 256_000_000
WORKER_CONFIG = {
    # pause later than Dask's 80%: a small worker's interpreter and libraries alone are most
    # of that, and a worker held paused by memory it cannot free never resumes. Set as Dask
    # config, which each nanny hands its worker (in the worker's environment it came too
    # late: the worker had read its config already, and paused at 80%)
    "distributed.worker.memory.pause": 0.9,
}
WORKER_ENV = {
    # Arrow buffers through malloc, which Dask's workers trim, rather than a pool that keeps
    # every partition's freed memory
    "ARROW_DEFAULT_MEMORY_POOL": "system",
}


class ComputeSection(BaseModel):
    """``[compute]`` in silo.toml: where this silo's big tables are processed."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    dask_scheduler: str | None = Field(
        default=None, description="address of the silo's own Dask scheduler (tcp:// or tls://)"
    )
    local_max_bytes: int = Field(
        default=2_000_000_000, ge=0, description="table files bigger than this use Dask"
    )
    workers: int = Field(default=2, ge=1, le=256, description="LocalCluster worker processes")
    worker_memory_bytes: int = Field(
        default=2_000_000_000, ge=MIN_WORKER_MEMORY, description="LocalCluster memory per worker"
    )
    partition_bytes: int = Field(default=64_000_000, ge=10_000, le=2_000_000_000)
    start_timeout_s: float = Field(default=120.0, gt=0, description="wait for workers this long")

    @field_validator("dask_scheduler")
    @classmethod
    def _address(cls, address: str | None) -> str | None:
        if address is not None and not address.startswith(("tcp://", "tls://")):
            raise ValueError(f"{address!r} is not a Dask scheduler address (tcp://HOST:PORT)")
        return address


def uses_dask(compute: ComputeSection, path: Path) -> bool:
    """Whether this silo processes the table at `path` on Dask: always with a scheduler of
    its own, else only when the file is bigger than `local_max_bytes`."""
    if compute.dask_scheduler is not None:
        return True
    try:
        return path.stat().st_size > compute.local_max_bytes
    except OSError as exc:
        raise DataError(f"{path}: cannot read the table file ({exc.strerror})") from exc


@contextmanager
def dask_client(compute: ComputeSection) -> Iterator[Client]:
    """A client to the silo's scheduler, or to a LocalCluster started (and stopped) here,
    current (dask collections computed inside use it) until the block ends.

    The LocalCluster listens on 127.0.0.1 only, without a dashboard, one thread per worker
    process (the libraries used per partition are single-threaded numpy and XGBoost calls
    that are given their own thread counts). Waits until every worker has joined.
    """
    with _opened(compute) as client, client.as_current():
        yield client


def _connect(compute: ComputeSection, stack: ExitStack) -> Client:
    """A client that is nobody's default, closed (with its LocalCluster) by `stack`."""
    from distributed import Client, LocalCluster

    if compute.dask_scheduler is not None:
        try:
            client = Client(
                compute.dask_scheduler, timeout=compute.start_timeout_s, set_as_default=False
            )
        except OSError as exc:
            raise SiloConfigError(
                f"[compute] dask_scheduler {compute.dask_scheduler}: cannot connect ({exc})"
            ) from exc
        stack.callback(client.close)
        return client
    import dask

    with dask.config.set(WORKER_CONFIG):  # the nannies keep it for restarted workers too
        cluster = LocalCluster(
            n_workers=compute.workers,
            threads_per_worker=1,
            processes=True,
            memory_limit=compute.worker_memory_bytes,
            host="127.0.0.1",
            dashboard_address=None,
            env=WORKER_ENV,  # in the environment, so that a restarted worker has it too
        )
    stack.callback(cluster.close)
    client = Client(cluster, set_as_default=False)
    stack.callback(client.close)
    client.wait_for_workers(compute.workers, timeout=compute.start_timeout_s)
    return client


@contextmanager
def _opened(compute: ComputeSection) -> Iterator[Client]:
    with ExitStack() as stack:
        yield _connect(compute, stack)


_SHARED: dict[ComputeSection, tuple[Client, ExitStack]] = {}
_SHARED_LOCK = threading.Lock()


def shared_client(compute: ComputeSection) -> Client:
    """The agent's client for `compute`, made on first use and kept until `close_shared`
    (or the process's exit): a LocalCluster started here, or a connection to the silo's
    scheduler. A client whose cluster went away is replaced. It is nobody's default: code
    that computes a collection without naming the client runs under ``client.as_current()``."""
    with _SHARED_LOCK:
        entry = _SHARED.get(compute)
        if entry is not None and entry[0].status == "running":
            return entry[0]
        if entry is not None:
            entry[1].close()
        if not _SHARED:
            atexit.register(close_shared)
        stack = ExitStack()
        try:
            client = _connect(compute, stack)
        except BaseException:
            stack.close()
            raise
        _SHARED[compute] = (client, stack)
        return client


def close_shared() -> None:
    """Close every client `shared_client` made (and stop their LocalClusters)."""
    with _SHARED_LOCK:
        entries = list(_SHARED.values())
        _SHARED.clear()
    for _, stack in entries:
        stack.close()


def read_partitions(path: Path, columns: list[str] | None, partition_bytes: int) -> Any:
    """The table at `path` as a dask DataFrame of partitions of about `partition_bytes`.

    Parquet is read row group by row group (a file written in one row group is one partition:
    write big tables with row groups of a few tens of MB); CSV is cut into byte blocks.
    """
    import dask.dataframe as dd

    from silos.data import check_csv_header, partition_read_error

    suffix = path.suffix.lower()
    try:
        if suffix in (".parquet", ".pq"):
            return dd.read_parquet(
                str(path), columns=columns, split_row_groups="adaptive", blocksize=partition_bytes
            )
        if suffix == ".csv":
            check_csv_header(path)  # another delimiter, a column named twice: as load_table
            return dd.read_csv(str(path), usecols=columns, blocksize=partition_bytes)
    except (OSError, ValueError) as exc:
        raise partition_read_error(path, exc) from exc
    raise DataError(f"{path}: a Dask silo reads CSV or Parquet files, not {suffix or 'no suffix'}")
