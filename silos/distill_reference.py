"""The reference set of a distillation run: synthetic rows every silo generates identically.

Silos exchange predictions on these rows, never on their own. Each row is drawn from public
knowledge only: the data contract (columns, ranges, categories) and the federation statistics
(securely summed per-feature means and standard deviations, `schemas.contracts.stats`), with a
seed derived from the run id (`schemas.distill.reference_seed`), so every silo builds the same
table without exchanging it and nobody's rows are in it:

- a numeric feature is a truncated normal on its contract range with the federation's mean and
  standard deviation (uniform on the range without statistics); draws are continuous, so a
  reference row equals a real row with probability 0, and a coincidence would carry no
  information about that row anyway, since no row was used to draw it;
- a categorical or boolean feature is uniform over its contract levels (the federation has no
  category frequencies; sharing them would tell more about the silos);
- no value is missing, and no sentinel is drawn.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.stats import truncnorm

from schemas.contracts import Contract
from schemas.contracts.stats import FederationStats
from silos.exceptions import FeatureError

# A federation whose feature barely varies would draw every reference row at its mean; a floor
# of 5% of the range keeps the reference rows spread enough to carry a decision boundary.
MIN_SCALED_STD = 0.05


def reference_table(
    contract: Contract, stats: FederationStats | None, n_rows: int, seed: int
) -> pd.DataFrame:
    """`n_rows` synthetic rows in the contract's feature columns (see the module docstring).

    Parameters
    ----------
    contract
        The run's data contract.
    stats
        The federation statistics of the run's statistics round, or None (uniform ranges).
    n_rows
        How many rows.
    seed
        `schemas.distill.reference_seed(run_id)`: the same at every silo.

    Raises
    ------
    FeatureError
        A numeric feature has no contract range to draw from.
    """
    if n_rows < 1:
        raise ValueError(f"a reference set needs at least one row, not {n_rows}")
    rng = np.random.default_rng(seed)
    columns: dict[str, object] = {}
    for col in contract.feature_columns:  # in feature order, so draws do not depend on dicts
        if col.type == "numeric":
            columns[col.name] = _numeric(contract, col.name, stats, n_rows, rng)
        else:
            levels = list(col.levels)
            picks = rng.integers(0, len(levels), size=n_rows)
            columns[col.name] = pd.Series([levels[i] for i in picks], dtype=object)
    return pd.DataFrame(columns)


def _numeric(
    contract: Contract,
    name: str,
    stats: FederationStats | None,
    n_rows: int,
    rng: np.random.Generator,
) -> np.ndarray:
    col = contract.column(name)
    if col.range is None:
        raise FeatureError(
            f"numeric feature {name!r} of contract {contract.name!r} has no range; the "
            "distillation reference set draws from the contract range"
        )
    low, high = col.range
    if stats is None:
        scaled = rng.uniform(0.0, 1.0, size=n_rows)
    else:
        column = stats.column(name)  # mean and std of the range-scaled value, in [0, 1]
        mean, std = column.mean, max(column.std, MIN_SCALED_STD)
        a, b = (0.0 - mean) / std, (1.0 - mean) / std
        scaled = truncnorm.rvs(a, b, loc=mean, scale=std, size=n_rows, random_state=rng)
    values = low + np.asarray(scaled, dtype=np.float64) * (high - low)
    sentinels = [float(s) for s in col.missing_sentinels]
    if sentinels:  # probability 0, but a sentinel would read as missing: move off it
        hit = np.isin(values, sentinels)
        values[hit] = np.nextafter(values[hit], high if high > low else low)
    return values


def reference_features(
    contract: Contract, stats: FederationStats | None, n_rows: int, seed: int
) -> np.ndarray:
    """The reference set encoded by the run's feature pipeline (what every model scores)."""
    from silos.features import FeaturePipeline

    table = reference_table(contract, stats, n_rows, seed)
    return FeaturePipeline.from_contract(contract, stats).encode(table)
