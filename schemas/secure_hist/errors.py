"""Errors of secure-histogram boosting, on either side of the wire.

Each names the silo, tree, depth and node at fault where known, and says what to do.

    SecureHistError
    ├── HistConfigError      run parameters are inconsistent (ranges, bins, precision bounds)
    ├── HistVectorError      a histogram vector has the wrong length or dtype
    ├── UnknownNodeError     a request names a node the receiver does not know / cannot split
    ├── NodeTooSmallError    a silo refuses a node below its policy's minimum rows
    └── SiloDroppedError     a silo left the run (dropped and recovered, or too few remain)
"""

from __future__ import annotations

from typing import TypedDict


class Where(TypedDict, total=False):
    """Where an error happened; passed as keyword arguments to every error."""

    silo: str | None
    tree: int | None
    depth: int | None
    node: int | None


class SecureHistError(Exception):
    """Base class; `silo`, `tree`, `depth` and `node` say where (each may be None)."""

    def __init__(
        self,
        message: str,
        *,
        silo: str | None = None,
        tree: int | None = None,
        depth: int | None = None,
        node: int | None = None,
    ) -> None:
        self.silo, self.tree, self.depth, self.node = silo, tree, depth, node
        where = [
            f"{name} {value}"
            for name, value in (("silo", silo), ("tree", tree), ("depth", depth), ("node", node))
            if value is not None
        ]
        prefix = f"[secure-hist {', '.join(where)}] " if where else "[secure-hist] "
        super().__init__(prefix + message)


class HistConfigError(SecureHistError):
    """Run parameters are inconsistent (feature ranges, bin counts, precision bounds)."""


class HistVectorError(SecureHistError):
    """A histogram vector has the wrong length or dtype for the level it answers."""


class UnknownNodeError(SecureHistError):
    """A request names a node that is not a leaf of the tree being grown at that depth."""


class NodeTooSmallError(SecureHistError):
    """A silo refuses to report a node whose (global) row count is below its policy minimum."""


class SiloDroppedError(SecureHistError):
    """A silo left the run, or too few silos remain to continue."""
