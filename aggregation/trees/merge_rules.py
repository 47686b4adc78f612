"""What both libraries' merges share: the bagging weights and the compatibility checks.

Bagging rule (`xgb_merge` explains it): silo k's new trees are scaled by n_k / N, N the rows
of every accepted silo, silos taken in sorted name order so the result does not depend on
the order updates arrived in.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Protocol, TypeVar

from schemas.tree_errors import MergeError


class TreeFamily(Protocol):
    """The part of a parsed model (XGBoost or LightGBM) a merge checks first."""

    @property
    def objective(self) -> str: ...

    @property
    def n_features(self) -> int: ...


def bagging_weights(updates: Mapping[str, tuple[bytes, int]]) -> dict[str, float]:
    """Silo -> n_k / N, in sorted silo order.

    Raises
    ------
    MergeError
        No updates, or a row count that is not positive.
    """
    if not updates:
        raise MergeError("no tree updates to merge; the round needs at least one silo")
    silos = sorted(updates)
    if any(updates[s][1] <= 0 for s in silos):
        raise MergeError("every silo's example count must be positive")
    total = sum(updates[s][1] for s in silos)
    return {s: updates[s][1] / total for s in silos}


M = TypeVar("M")


def parse_updates(
    updates: Mapping[str, tuple[bytes, int]], parse: Callable[[bytes], M]
) -> tuple[dict[str, float], dict[str, M]]:
    """(silo -> n_k / N, silo -> parsed model), both in sorted silo order (`bagging_weights`)."""
    weights = bagging_weights(updates)
    return weights, {s: parse(updates[s][0]) for s in weights}


def who(silo: str | None) -> str:
    return f"silo {silo}" if silo else "the update"


def check_same_family(reference: TreeFamily, other: TreeFamily, silo: str | None) -> None:
    """MergeError unless `other` has the objective and the feature count of `reference`."""
    if other.objective != reference.objective:
        raise MergeError(
            f"{who(silo)} trained objective {other.objective!r}; the federation uses "
            f"{reference.objective!r}",
            silo=silo,
        )
    if other.n_features != reference.n_features:
        raise MergeError(
            f"{who(silo)} has {other.n_features} features; the global model {reference.n_features}",
            silo=silo,
        )
