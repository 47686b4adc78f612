"""A silo's share of the federation statistics: three sums per numeric feature, never rows.

The statistics round: every silo computes `local_moments` on its training rows, the vectors
are summed by secure aggregation (the service sees only the sum), and every silo builds
`FederationStats.from_summed_moments(total, contract)` and then
`FeaturePipeline.from_contract(contract, stats)`. See `schemas.contracts.stats` for the
vector's layout and why values are range-scaled before summing.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from schemas.contracts import Contract
from schemas.contracts.stats import MOMENTS_PER_COLUMN, stats_columns
from silos.exceptions import FeatureError
from silos.features import numeric_values, range_scaled


def local_moments(df: pd.DataFrame, contract: Contract) -> np.ndarray:
    """Count, sum and sum of squares of each numeric feature's present, range-scaled values.

    Sentinels (e.g. chol 0) and empty cells are missing and are not counted; present values
    are clipped to the contract range and scaled into [0, 1] by it, as the pipeline does.

    Parameters
    ----------
    df
        The silo's table (the rows it trains on).
    contract
        The federation's data contract.

    Returns
    -------
    numpy.ndarray
        float64 of length ``3 * len(stats_columns(contract))``: (count, sum, sum of squares)
        for each column in turn. Every entry lies in [0, len(df)].

    Raises
    ------
    FeatureError
        A numeric feature column is absent or holds values that are not numbers.
    """
    names = stats_columns(contract)
    out = np.zeros((len(names), MOMENTS_PER_COLUMN), dtype=np.float64)
    for i, name in enumerate(names):
        if name not in df.columns:
            raise FeatureError(
                f"the table has no column {name!r}, a numeric feature of contract "
                f"{contract.name!r} v{contract.version}; add it (empty if unknown)"
            )
        col = contract.column(name)
        scaled = range_scaled(col, numeric_values(col, df[name]))
        present = scaled[~np.isnan(scaled)]
        out[i] = (present.size, present.sum(), np.square(present).sum())
    return out.reshape(-1)
