"""Federation-wide statistics for the feature pipeline, built from summed per-silo moments.

A silo never shares rows. For every numeric feature of the contract it computes three sums
over its own present values (`silos.federated_stats.local_moments`):

    count, sum of x', sum of x'^2     where x' = (clip(x, low, high) - low) / (high - low)

x' is the value clipped to the contract range and scaled by it into [0, 1], exactly what the
pipeline standardises. Scaling first keeps every entry of the vector between 0 and the silo's
row count, whatever the column's unit, so the vector fits a fixed-point secure-aggregation
quantizer (clip = an upper bound on any silo's rows) and the sum of squares cannot overflow.

Vector layout (float64, length 3 * n_columns): for each column in `stats_columns(contract)`
order, the triple (count, sum, sum of squares). Vectors from different silos are summed
element-wise (by secure aggregation) and `FederationStats.from_summed_moments` turns the sum
into means and (population) standard deviations, in both scaled and contract units.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike

from schemas.contracts.loader import Contract, ContractError

MOMENTS_PER_COLUMN = 3  # count, sum, sum of squares

# A federation whose feature is constant would divide by zero; it is left unscaled instead.
MIN_STD = 1e-12


def stats_columns(contract: Contract) -> tuple[str, ...]:
    """The numeric feature columns whose moments are summed, in the vector's order."""
    return tuple(col.name for col in contract.feature_columns if col.type == "numeric")


def moments_length(contract: Contract) -> int:
    """Length of a moment vector for `contract`."""
    return MOMENTS_PER_COLUMN * len(stats_columns(contract))


@dataclass(frozen=True)
class ColumnStats:
    """One numeric feature's federation statistics.

    `mean` and `std` are of the range-scaled value x' (what the pipeline uses);
    `mean_in_unit` and `std_in_unit` are the same in the column's own unit, for people.
    """

    name: str
    count: int
    mean: float
    std: float
    mean_in_unit: float
    std_in_unit: float


@dataclass(frozen=True)
class FederationStats:
    """Means and standard deviations of every numeric feature across the whole federation."""

    contract: str
    contract_version: str
    columns: tuple[ColumnStats, ...]

    def column(self, name: str) -> ColumnStats:
        """The statistics of column `name`; raises ContractError when there are none."""
        for col in self.columns:
            if col.name == name:
                return col
        raise ContractError(
            f"the federation statistics of contract {self.contract!r} have no column {name!r}"
        )

    @classmethod
    def from_summed_moments(cls, vector: ArrayLike, contract: Contract) -> FederationStats:
        """Means and standard deviations from the element-wise sum of every silo's moments.

        Parameters
        ----------
        vector
            Sum over silos of `silos.federated_stats.local_moments(df, contract)`; see the
            module docstring for its layout. Counts may carry quantization noise: they are
            rounded to the nearest integer.
        contract
            The contract the moments were computed under.

        Returns
        -------
        FederationStats
            One `ColumnStats` per column of `stats_columns(contract)`.

        Raises
        ------
        ContractError
            The vector has the wrong length, is not finite, or a column has no present value
            anywhere in the federation (its mean is undefined).
        """
        names = stats_columns(contract)
        moments = np.asarray(vector, dtype=np.float64)
        if moments.shape != (MOMENTS_PER_COLUMN * len(names),):
            raise ContractError(
                f"moment vector of shape {moments.shape} does not fit contract {contract.name!r} "
                f"v{contract.version}: expected ({MOMENTS_PER_COLUMN * len(names)},) for "
                f"columns {list(names)}; were the silos' contracts the same version?"
            )
        if not np.isfinite(moments).all():
            raise ContractError("the summed moment vector holds NaN or infinity")
        columns = tuple(
            _column_stats(contract, name, triple)
            for name, triple in zip(names, moments.reshape(-1, MOMENTS_PER_COLUMN), strict=True)
        )
        return cls(contract=contract.name, contract_version=contract.version, columns=columns)


def _column_stats(contract: Contract, name: str, triple: np.ndarray) -> ColumnStats:
    count, total, squares = (float(v) for v in triple)
    n = round(count)
    if n < 1:
        raise ContractError(
            f"column {name!r} has no present value at any silo, so its federation mean is "
            "undefined; check that the silos hold it, or make it a range-scaled contract"
        )
    mean = total / count
    # E[x^2] - E[x]^2 can dip below 0 by rounding when every value is equal.
    std = float(np.sqrt(max(squares / count - mean * mean, 0.0)))
    low, high = contract.column(name).range  # type: ignore[misc]  # numeric features have one
    width = high - low
    return ColumnStats(
        name=name,
        count=n,
        mean=mean,
        std=std,
        mean_in_unit=low + mean * width,
        std_in_unit=std * width,
    )


def standardise(scaled: np.ndarray, stats: ColumnStats) -> np.ndarray:
    """(x' - mean) / std of range-scaled values; a constant feature is only centred."""
    return (scaled - stats.mean) / (stats.std if stats.std > MIN_STD else 1.0)


def feature_ranges(
    contract: Contract, stats: FederationStats | None
) -> tuple[tuple[float, float], ...]:
    """The range of every encoded feature, from the contract (and federation statistics) alone.

    The silos' pipeline and the service's secure-hist set-up both use this rule: range-scaled
    numeric features lie in [0, 1]; standardised ones (with federation statistics) in
    [(0 - mean) / std, (1 - mean) / std]; missing-value indicators and one-hot slots in [0, 1].
    """
    out: list[tuple[float, float]] = []
    for col in contract.feature_columns:
        if col.type == "numeric":
            lo, hi = 0.0, 1.0
            if stats is not None:
                s = stats.column(col.name)
                std = s.std if s.std > MIN_STD else 1.0
                lo, hi = (0.0 - s.mean) / std, (1.0 - s.mean) / std
            out.append((lo, hi))
            if col.allows_missing:
                out.append((0.0, 1.0))
        else:
            out.extend([(0.0, 1.0)] * (len(col.levels) + int(col.allows_missing)))
    return tuple(out)
