"""Where a silo computes: in the agent's own process, or on the silo's own Dask cluster.

A bank's transaction table often does not fit in one process's memory. ``[compute]`` in
silo.toml lets the operator point the agent at a Dask scheduler of the silo's own
(``dask_scheduler = "tcp://10.0.0.5:8786"``); without one, a table file larger than
``local_max_bytes`` gets a LocalCluster on this machine (loopback only, ``workers`` processes
of ``worker_memory_bytes`` each), so no single process ever holds the whole table. Smaller
tables stay on the pandas path, which is faster for them.

Status (issue 20): the pieces are built and tested (`silos/chunked_gate.py`,
`silos/dask_hist.py`, `silos/dask_boost.py`, tests/silos/test_dask_silo.py) but the agent's
rounds do not call them yet, so a run still reads the table with pandas. The three call sites:
`silos/round_gate._check_table` (use `chunked_gate.gate_on_dask` when `uses_dask`), the
secure-hist handler and `silos/hist_round.py` (a `DaskHist` in place of `HistSilo`), and the
tree handler (`dask_boost.train_trees_dask`); a Dask silo also needs its test rows from
`test_path` (a per-partition split is not built).

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

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from silos.exceptions import DataError, SiloConfigError

if TYPE_CHECKING:
    from distributed import Client

# a worker process holds Python, pandas, pyarrow and dask (about 180 MB) before any data
MIN_WORKER_MEMORY = 256_000_000
WORKER_ENV = {
    # pause later than Dask's 80%: a small worker's interpreter and libraries alone are most
    # of that, and a worker held paused by memory it cannot free never resumes
    "DASK_DISTRIBUTED__WORKER__MEMORY__PAUSE": "0.9",
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
    """A client to the silo's scheduler, or to a LocalCluster started (and stopped) here.

    The LocalCluster listens on 127.0.0.1 only, without a dashboard, one thread per worker
    process (the libraries used per partition are single-threaded numpy and XGBoost calls
    that are given their own thread counts). Waits until every worker has joined.
    """
    from distributed import Client, LocalCluster

    if compute.dask_scheduler is not None:
        try:
            client = Client(compute.dask_scheduler, timeout=compute.start_timeout_s)
        except OSError as exc:
            raise SiloConfigError(
                f"[compute] dask_scheduler {compute.dask_scheduler}: cannot connect ({exc})"
            ) from exc
        with client:
            yield client
        return
    cluster = LocalCluster(
        n_workers=compute.workers,
        threads_per_worker=1,
        processes=True,
        memory_limit=compute.worker_memory_bytes,
        host="127.0.0.1",
        dashboard_address=None,
        env=WORKER_ENV,  # in the environment, so that a restarted worker has it too
    )
    with cluster, Client(cluster) as client:
        client.wait_for_workers(compute.workers, timeout=compute.start_timeout_s)
        yield client


def read_partitions(path: Path, columns: list[str] | None, partition_bytes: int) -> Any:
    """The table at `path` as a dask DataFrame of partitions of about `partition_bytes`.

    Parquet is read row group by row group (a file written in one row group is one partition:
    write big tables with row groups of a few tens of MB); CSV is cut into byte blocks.
    """
    import dask.dataframe as dd

    suffix = path.suffix.lower()
    try:
        if suffix in (".parquet", ".pq"):
            return dd.read_parquet(
                str(path), columns=columns, split_row_groups="adaptive", blocksize=partition_bytes
            )
        if suffix == ".csv":
            return dd.read_csv(str(path), usecols=columns, blocksize=partition_bytes)
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: cannot read the table in partitions ({exc})") from exc
    raise DataError(f"{path}: a Dask silo reads CSV or Parquet files, not {suffix or 'no suffix'}")
