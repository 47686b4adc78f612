"""Secure-hist on a Dask silo: histograms computed per partition, summed before masking.

Everything a silo computes in a secure-hist run is per row (gradients, bins, the route of a
row through the tree, its margin) except the vectors it sends, which are sums over rows. So a
silo whose table is spread over Dask workers keeps one `HistSilo` per partition, on the worker
that holds the partition (a Dask actor, `HistShard`), applies every step to every shard, and
adds the shards' vectors. The vectors are ``<u8`` two's-complement integers, and addition
modulo 2^64 commutes with that encoding, so the sum is the very vector, byte for byte, that
`silos.hist_trainer` computes on the whole table (the tests assert it); it is then fitted to
its wire widths and masked exactly as on the pandas path.

The check that a stated node size is not below this silo's own rows in the node must use the
silo's rows, not a partition's: `DaskHist.level_vector` sums the shards' counts first.

`streamed_setup_vector` computes the setup vector (fine-grid counts, rows, label sum) without
keeping any rows: partition by partition, for tables larger than the cluster's memory.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from schemas.secure_hist.errors import NodeTooSmallError
from schemas.secure_hist.packing import Widths, level_widths
from schemas.secure_hist.protocol import HistLayout, HistRunConfig, LevelRequest, TreeDone
from silos import hist_trainer
from silos.features import FeaturePipeline
from silos.hist_trainer import HistSilo


def _encoded(pipeline: FeaturePipeline, part: pd.DataFrame, source: Path) -> tuple[Any, Any]:
    return pipeline.transform(part, source)


class HistShard:
    """One partition's rows in a secure-hist run, held by a Dask worker (an actor)."""

    def __init__(
        self,
        name: str,
        part: pd.DataFrame,
        pipeline: FeaturePipeline,
        config: HistRunConfig,
        min_rows_policy: int,
        source: Path,
        index: int = 0,
    ) -> None:
        X, y = _encoded(pipeline, part, source)
        self.state = HistSilo.create(name, X, y, config, min_rows_policy)
        self.state.rounding_stream = f"partition {index}"  # not every shard the same draws

    def rows(self) -> int:
        return len(self.state.y)

    def setup_vector(self) -> np.ndarray:
        return hist_trainer.setup_vector(self.state)

    def start_training(self, cuts: Sequence[np.ndarray], base: float | list[float]) -> None:
        hist_trainer.start_training(self.state, cuts, base)

    def start_tree(self, tree: int, restart: bool) -> None:
        hist_trainer.start_tree(self.state, tree, restart=restart)

    def own_rows(self, request: LevelRequest) -> dict[int, int]:
        """This partition's rows in each requested node once the request's splits apply."""
        out = {}
        for c in request.compute:
            # the same count hist_trainer checks per silo, here summed over shards by the driver
            own = hist_trainer._rows_after_splits(self.state, request, c.node)
            out[c.node] = own or 0
        return out

    def level_vector(self, request: LevelRequest) -> np.ndarray:
        return hist_trainer.level_vector(self.state, request)

    def finish_tree(self, done: TreeDone) -> None:
        hist_trainer.finish_tree(self.state, done)


def _sum(vectors: Sequence[np.ndarray]) -> np.ndarray:
    """Shards' ``<u8`` vectors added modulo 2^64 (numpy wraps unsigned arrays silently)."""
    total = np.zeros_like(np.asarray(vectors[0], dtype="<u8"))
    for v in vectors:
        total += np.asarray(v, dtype="<u8")
    return total


@dataclass
class DaskHist:
    """A silo's secure-hist state spread over its Dask workers: one `HistShard` per partition.

    The methods mirror `silos.hist_trainer`'s functions and return the same vectors.
    """

    name: str
    config: HistRunConfig
    min_rows_policy: int
    shards: list[Any]  # distributed.Actor of HistShard
    tree: int = -1  # the tree being grown, as `HistSilo.tree`
    layout: HistLayout | None = field(default=None)  # from the cut points, as HistSilo's

    @classmethod
    def create(
        cls,
        client: Any,
        name: str,
        table: Any,
        pipeline: FeaturePipeline,
        config: HistRunConfig,
        min_rows_policy: int,
        source: Path,
    ) -> DaskHist:
        """Encode every partition of `table` (a dask DataFrame) on its worker, as a shard."""
        parts = client.compute(table.to_delayed())
        futures = [
            client.submit(
                HistShard, name, p, pipeline, config, min_rows_policy, source, i, actor=True
            )
            for i, p in enumerate(parts)
        ]
        with client.as_current():  # an actor handle calls through the client it was made in
            shards = client.gather(futures)
        del parts  # the shards hold the encoded rows; the raw partitions can go
        return cls(name, config, min_rows_policy, list(shards))

    def _each(self, method: str, *args: Any) -> list[Any]:
        calls = [getattr(s, method)(*args) for s in self.shards]
        return [c.result() for c in calls]

    def rows(self) -> int:
        return sum(self._each("rows"))

    def setup_vector(self) -> np.ndarray:
        return _sum(self._each("setup_vector"))

    def start_training(self, cuts: Sequence[np.ndarray], base: float | list[float]) -> None:
        self._each("start_training", [np.asarray(c) for c in cuts], base)
        self.layout = HistLayout.from_cuts(cuts)

    def start_tree(self, tree: int, restart: bool = False) -> None:
        self._each("start_tree", tree, restart)
        self.tree = tree

    def wire_widths(self, request: LevelRequest) -> Widths:
        """As `hist_trainer.wire_widths`: from the nodes' federation-wide rows."""
        assert self.layout is not None
        return level_widths(self.config, self.layout.total, [c.rows for c in request.compute])

    def level_vector(self, request: LevelRequest) -> np.ndarray:
        """The level's histograms, summed over shards; refuses a stated node size below this
        silo's own rows in the node (summed over its partitions)."""
        own: dict[int, int] = {}
        for counts in self._each("own_rows", request):
            for node, n in counts.items():
                own[node] = own.get(node, 0) + n
        for c in request.compute:
            if own.get(c.node, 0) > c.rows:
                raise NodeTooSmallError(
                    f"the service states {c.rows} rows federation-wide for this node but this "
                    f"silo alone holds {own[c.node]}: the request is inconsistent, refusing",
                    silo=self.name,
                    tree=request.tree,
                    depth=request.depth,
                    node=c.node,
                )
        return _sum(self._each("level_vector", request))

    def finish_tree(self, done: TreeDone) -> None:
        self._each("finish_tree", done)


def _partition_setup(
    part: pd.DataFrame, pipeline: FeaturePipeline, config: HistRunConfig, source: Path
) -> np.ndarray:
    X, y = _encoded(pipeline, part, source)
    return hist_trainer.setup_vector(HistSilo.create("partition", X, y, config))


def streamed_setup_vector(
    client: Any, table: Any, pipeline: FeaturePipeline, config: HistRunConfig, source: Path
) -> np.ndarray:
    """The setup vector of a table bigger than the cluster's memory: each partition is read,
    encoded and counted on a worker, and only its counts are kept."""
    import dask
    from distributed import as_completed

    # one graph, each read followed by its counting: Dask's queuing of root tasks keeps only
    # about a partition per worker in memory at a time
    count = dask.delayed(_partition_setup, pure=True)
    futures = client.compute([count(p, pipeline, config, source) for p in table.to_delayed()])
    total = np.zeros(0, dtype="<u8")
    for future in as_completed(futures):
        vector = future.result()
        total = vector.copy() if total.size == 0 else _sum([total, vector])
        future.release()
    return total
