"""Reading a silo's table from disk, splitting it, and deriving the binary target."""

from __future__ import annotations

import operator
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.model_selection import train_test_split

from schemas.contracts import Contract
from silos.exceptions import DataError

SUPPORTED_SUFFIXES = (".csv", ".parquet")

_COMPARE = {
    ">": operator.gt,
    ">=": operator.ge,
    "<": operator.lt,
    "<=": operator.le,
    "==": operator.eq,
    "!=": operator.ne,
}


def load_table(path: Path) -> pd.DataFrame:
    """Read a CSV or Parquet table.

    Parameters
    ----------
    path
        A ``.csv`` or ``.parquet`` file.

    Returns
    -------
    pandas.DataFrame
        The table, with at least one row.

    Raises
    ------
    DataError
        The file does not exist, has an unsupported suffix, cannot be parsed, or has no rows.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in SUPPORTED_SUFFIXES:
        raise DataError(
            f"{path}: unsupported file type {path.suffix!r}; "
            f"save the table as one of {list(SUPPORTED_SUFFIXES)}"
        )
    if not path.is_file():
        raise DataError(f"{path}: no such file; check the silo's data path")
    if path.stat().st_size == 0:
        raise DataError(f"{path}: the file is empty (0 bytes)")
    try:
        if suffix == ".csv":
            df = pd.read_csv(path)
        else:
            df = pd.read_parquet(path)
    except (OSError, ValueError, pd.errors.ParserError, UnicodeDecodeError) as exc:
        # pyarrow's ArrowInvalid is a ValueError; pandas' EmptyDataError is one too.
        raise DataError(f"{path}: cannot read it as {suffix[1:]}: {exc}") from exc
    if df.empty:
        raise DataError(f"{path}: the table has no rows")
    return df


def binary_target(df: pd.DataFrame, contract: Contract) -> np.ndarray:
    """The 0/1 target under the contract's positive rule, e.g. ``num > 0``.

    Raises
    ------
    DataError
        The target column is absent or has missing values.
    """
    column = contract.target.column
    if column not in df.columns:
        raise DataError(f"the table has no target column {column!r} (contract {contract.name})")
    values = df[column]
    missing = int(values.isna().sum())
    if missing:
        raise DataError(
            f"target column {column!r} has {missing} missing values; drop those rows first"
        )
    rule = contract.target.positive_if
    positive = _COMPARE[rule.op](values.to_numpy(), rule.value)
    return np.asarray(positive, dtype=np.int64)


def split_train_test(
    df: pd.DataFrame, contract: Contract, test_fraction: float, seed: int
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Split rows into train and test sets, stratified on the binary target.

    The same table, fraction and seed always give the same split.

    Raises
    ------
    DataError
        The fraction is outside (0, 1), or a class has too few rows to stratify.
    """
    if not 0.0 < test_fraction < 1.0:
        raise DataError(f"test_fraction must be between 0 and 1, got {test_fraction}")
    y = binary_target(df, contract)
    counts = np.bincount(y, minlength=2)
    if counts.min() < 2:
        raise DataError(
            f"cannot stratify: the table has {counts[0]} negative and {counts[1]} positive rows; "
            "each class needs at least 2"
        )
    try:
        train, test = train_test_split(
            df, test_size=test_fraction, random_state=seed, shuffle=True, stratify=y
        )
    except ValueError as exc:
        raise DataError(
            f"cannot split {len(df)} rows with test_fraction={test_fraction}: {exc}"
        ) from exc
    return train, test
