"""The feature pipeline every silo applies identically, built only from the data contract.

No statistic is ever computed from one silo's rows: scaling uses the contract's declared
ranges, or federation-wide statistics summed from every silo's moments
(`schemas.contracts.stats`), and missing values get the contract's agreed fill values or the
federation mean. So two silos holding the same row produce the same feature vector, and the
model's inputs mean the same thing everywhere.

Encoding, per feature column, in contract order:

- numeric: sentinels (e.g. chol 0) become missing; values are clipped to the contract range
  and scaled to [0, 1] by it. Without federation statistics, missing values get the scaled
  `impute` value. With them (`FeaturePipeline.from_contract(contract, stats)`), missing
  values get the federation mean and every value is standardised, (x' - mean) / std, so a
  missing value encodes as 0. A column that may be missing also gets a 0/1 indicator feature
  ``<name>__missing``.
- categorical / boolean: one-hot over the contract's fixed categories (``<name>=<category>``;
  booleans use ``false``/``true``), plus a ``<name>=missing`` slot when the column may be
  missing. When the contract gives an `impute` category, a missing row also sets that slot.
- a category the contract does not list raises `FeatureError` by default; a column declared
  with ``on_unknown = "missing"`` encodes it as missing instead (and it is counted as imputed).
- a missing value in a column whose ``max_missing_fraction`` is 0 raises `FeatureError`: the
  validation gate should have stopped that table, and there is no slot to put it in.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from schemas.contracts import Column, Contract
from schemas.contracts.stats import ColumnStats, FederationStats, standardise
from schemas.tree_features import encoded_feature_names
from silos.data import target_labels
from silos.exceptions import FeatureError

_TRUE = {"true", "1", "yes"}
_FALSE = {"false", "0", "no"}


@dataclass(frozen=True)
class FeaturePipeline:
    """Turns a contract-conforming table into a float32 feature matrix and target."""

    contract: Contract
    feature_names: tuple[str, ...]
    stats: FederationStats | None = None

    @classmethod
    def from_contract(
        cls, contract: Contract, stats: FederationStats | None = None
    ) -> FeaturePipeline:
        """Build the pipeline for `contract`, optionally with federation statistics.

        Parameters
        ----------
        contract
            The data contract; the feature names depend on it alone.
        stats
            Federation means and standard deviations of the numeric features (from a
            statistics round). With them, numeric features are standardised and missing
            values get the federation mean; without them, the contract's range scaling and
            `impute` values apply.

        Raises
        ------
        FeatureError
            `stats` were computed under another contract or version, or lack a column.
        """
        if stats is not None:
            _check_stats(contract, stats)
        return cls(contract=contract, feature_names=encoded_feature_names(contract), stats=stats)

    @property
    def n_features(self) -> int:
        return len(self.feature_names)

    def encode(self, df: pd.DataFrame) -> np.ndarray:
        """The feature matrix only, float32 of shape (n_rows, n_features)."""
        blocks = [self._encode(col, df) for col in self._columns]
        matrix = np.concatenate([block for block, _ in blocks], axis=1).astype(np.float32)
        return matrix

    def transform(self, df: pd.DataFrame, source: object = None) -> tuple[np.ndarray, np.ndarray]:
        """Features and the target labels (`silos.data.target_labels`, by the contract's task).

        Returns
        -------
        X : numpy.ndarray
            float32, shape (n_rows, n_features), columns as `feature_names`.
        y : numpy.ndarray
            float32, shape (n_rows,): 0/1 (binary), the class index (multiclass) or the
            target value (regression).

        Raises
        ------
        FeatureError
            A feature column is absent, not numeric where it should be, holds a category the
            contract does not list, or is missing where the contract forbids it.
        DataError
            The target column is absent or incomplete, or holds a value the task cannot use;
            the message names `source` (the file) when given.
        """
        features = self.encode(df)
        target = target_labels(df, self.contract, source).astype(np.float32)
        return features, target

    def imputation_report(self, df: pd.DataFrame) -> dict[str, int]:
        """How many values of each feature column were missing and got imputed."""
        return {col.name: self._encode(col, df)[1] for col in self._columns}

    def _encode(self, col: Column, df: pd.DataFrame) -> tuple[np.ndarray, int]:
        column_stats = None
        if self.stats is not None and col.type == "numeric":
            column_stats = self.stats.column(col.name)
        return _encode_column(col, self._series(df, col), column_stats)

    @property
    def _columns(self) -> tuple[Column, ...]:
        return self.contract.feature_columns

    def _series(self, df: pd.DataFrame, col: Column) -> pd.Series:
        if col.name not in df.columns:
            raise FeatureError(
                f"the table has no column {col.name!r}, a feature of contract "
                f"{self.contract.name!r} v{self.contract.version}; add it (empty if unknown)"
            )
        return df[col.name]


def _check_stats(contract: Contract, stats: FederationStats) -> None:
    if (stats.contract, stats.contract_version) != (contract.name, contract.version):
        raise FeatureError(
            f"federation statistics are for contract {stats.contract!r} "
            f"v{stats.contract_version}, not {contract.name!r} v{contract.version}; "
            "rerun the statistics round with the federation's current contract"
        )
    known = {c.name for c in stats.columns}
    absent = [
        c.name for c in contract.feature_columns if c.type == "numeric" and c.name not in known
    ]
    if absent:
        raise FeatureError(f"federation statistics lack numeric features {absent}")


def _encode_column(
    col: Column, series: pd.Series, stats: ColumnStats | None = None
) -> tuple[np.ndarray, int]:
    """One column's block of features and how many of its values were imputed."""
    if col.type == "numeric":
        return _encode_numeric(col, series, stats)
    return _encode_discrete(col, series)


def numeric_values(col: Column, series: pd.Series) -> np.ndarray:
    """A numeric column as float64, its sentinels and empty cells as NaN (not clipped).

    Raises
    ------
    FeatureError
        The column holds values that are not numbers.
    """
    numeric = pd.to_numeric(series, errors="coerce")
    # a copy: pandas 3 hands out read-only views, and sentinels are overwritten below
    values = numeric.to_numpy(dtype=np.float64, na_value=np.nan, copy=True)
    not_numbers = np.isnan(values) & series.notna().to_numpy()
    if not_numbers.any():
        examples = sorted({str(v) for v in series[not_numbers].head(3)})
        raise FeatureError(
            f"column {col.name!r} is numeric ({col.unit or 'no unit'}) but holds "
            f"{int(not_numbers.sum())} non-numeric values; clean them at the silo",
            examples=examples,
        )
    for sentinel in col.missing_sentinels:
        values[values == float(sentinel)] = np.nan
    return values


def range_scaled(col: Column, values: np.ndarray) -> np.ndarray:
    """Values clipped to the contract range and mapped into [0, 1] by it (NaN stays NaN)."""
    assert col.range is not None  # the contract guarantees a range on numeric features
    low, high = col.range
    return (np.clip(values, low, high) - low) / (high - low)


def _encode_numeric(
    col: Column, series: pd.Series, stats: ColumnStats | None
) -> tuple[np.ndarray, int]:
    values = numeric_values(col, series)
    missing = np.isnan(values)
    _refuse_unexpected_missing(col, missing)
    scaled = range_scaled(col, values)
    if stats is not None:
        scaled[missing] = stats.mean
        scaled = standardise(scaled, stats)
    elif missing.any():
        low, high = col.range  # type: ignore[misc]
        scaled[missing] = (float(col.impute) - low) / (high - low)  # type: ignore[arg-type]
    block = [scaled]
    if col.allows_missing:
        block.append(missing.astype(np.float64))
    return np.stack(block, axis=1), int(missing.sum())


def _encode_discrete(col: Column, series: pd.Series) -> tuple[np.ndarray, int]:
    normalised = _normalise_levels(col, series)
    missing = np.array([v is None for v in normalised], dtype=bool)
    unknown = np.array([v is _UNKNOWN for v in normalised], dtype=bool)
    if unknown.any():
        if col.on_unknown == "error":
            examples = sorted({str(v) for v in series[unknown].head(5)})
            raise FeatureError(
                f"column {col.name!r} holds {int(unknown.sum())} values the contract does not "
                f"list; allowed: {list(col.levels)}. Recode them at the silo, "
                'or declare on_unknown = "missing" for this column in the contract',
                examples=examples,
            )
        missing |= unknown
    _refuse_unexpected_missing(col, missing)
    block = [
        np.array([v == level and v is not _UNKNOWN for v in normalised], dtype=np.float64)
        for level in col.levels
    ]
    if col.impute is not None:
        block[list(col.levels).index(col.impute)][missing] = 1.0
    if col.allows_missing:
        block.append(missing.astype(np.float64))
    return np.stack(block, axis=1), int(missing.sum())


class _Unknown:
    """Marks a value that is present but not one of the column's levels."""


_UNKNOWN = _Unknown()


def _normalise_levels(col: Column, series: pd.Series) -> list[object]:
    """Each value as one of the column's levels, None for missing, or _UNKNOWN."""
    sentinels = {str(s) for s in col.missing_sentinels}
    levels = set(col.levels)
    out: list[object] = []
    for value in series.tolist():
        if value is None or (not isinstance(value, str) and pd.isna(value)):
            out.append(None)
        elif str(value) in sentinels:
            out.append(None)
        elif col.type == "boolean":
            out.append(_as_bool(value))
        else:
            out.append(str(value) if str(value) in levels else _UNKNOWN)
    return out


def _as_bool(value: object) -> object:
    if isinstance(value, bool | np.bool_):
        return bool(value)
    if isinstance(value, int | float | np.integer | np.floating) and value in (0, 1):
        return bool(value)
    text = str(value).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    return _UNKNOWN


def _refuse_unexpected_missing(col: Column, missing: np.ndarray) -> None:
    if missing.any() and not col.allows_missing:
        raise FeatureError(
            f"column {col.name!r} has {int(missing.sum())} missing values but the contract "
            "allows none (max_missing_fraction = 0); fill or drop those rows at the silo, or "
            "agree a higher max_missing_fraction in the contract"
        )
