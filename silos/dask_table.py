"""A Dask silo's training table as the round handlers see it (`LocalData.dask`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from silos.compute import ComputeSection, read_partitions, shared_client
from silos.features import FeaturePipeline

if TYPE_CHECKING:
    from distributed import Client


@dataclass(frozen=True)
class DaskTable:
    """A silo's training table on its Dask cluster: where it is, how it is encoded."""

    compute: ComputeSection
    path: Path
    pipeline: FeaturePipeline
    n_rows: int

    def client(self) -> Client:
        return shared_client(self.compute)

    def partitions(self) -> Any:
        """The table as a dask DataFrame (nothing is read until something is computed)."""
        return read_partitions(self.path, None, self.compute.partition_bytes)
