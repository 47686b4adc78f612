"""Reading a silo's table from disk, splitting it, and deriving the target labels.

Labels follow the contract's task: binary 0/1 by the positive rule, multiclass the index of the
value in `contract.classes`, regression the value itself (float).
"""

from __future__ import annotations

import operator
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pandas as pd

from schemas.contracts import Contract
from schemas.contracts.gx_suite import boolean_text
from silos.exceptions import DataError
from silos.split import SplitError, split_indices

SUPPORTED_SUFFIXES = (".csv", ".parquet")

_MAX_NAMES = 10  # in one detail line
_OTHER_DELIMITERS = {";": "';'", "\t": "tab", "|": "'|'"}  # as in Excel's exports
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
        The file does not exist, has an unsupported suffix, cannot be parsed (a CSV that is
        not UTF-8, not comma-separated or names a column twice), or has no rows.
    """
    path = Path(path)
    if path.is_dir():
        raise DataError(f"{path}: is a directory, not a table file; check the silo's data path")
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
            check_csv_header(path)
            df = pd.read_csv(path)
        else:
            df = pd.read_parquet(path)
    except UnicodeDecodeError as exc:
        raise DataError(_not_utf8(path)) from exc
    except (OSError, ValueError, pd.errors.ParserError) as exc:
        # pyarrow's ArrowInvalid is a ValueError; pandas' EmptyDataError is one too.
        raise DataError(f"{path}: cannot read it as {suffix[1:]}: {exc}") from exc
    if df.empty:
        raise DataError(f"{path}: the table has no rows")
    return df


def name_list(names: Iterable[object]) -> str:
    """The first ten names, sorted, and how many more there are: a detail line stays short."""
    listed = sorted(str(n) for n in names)
    more = len(listed) - _MAX_NAMES
    return f"{listed[:_MAX_NAMES]}" + (f" and {more} more" if more > 0 else "")


def check_csv_header(path: Path) -> None:
    """Refuse a header pandas would misread: another delimiter, or a name given twice.

    pandas renames a second "age" to "age.1", and reads a ';'-delimited file as one column;
    either would reach the contract as columns the file does not have.
    """
    header = pd.read_csv(path, header=None, nrows=1, dtype=str, keep_default_na=False)
    names = [str(n) for n in header.iloc[0]] if len(header) else []
    if len(names) == 1:
        for sep, label in _OTHER_DELIMITERS.items():
            if sep in names[0]:
                raise DataError(
                    f"{path}: the header reads as one column holding {label} characters: the "
                    f"file looks {label}-delimited, but fedsilo reads comma-separated CSV; "
                    "export it again with ',' between fields and '.' as the decimal point"
                )
    twice = sorted({n for n in names if n and names.count(n) > 1})
    if twice:
        raise DataError(
            f"{path}: the header names {', '.join(map(repr, twice))} more than once; rename "
            "or drop the copies"
        )


def partition_read_error(path: Path, exc: Exception) -> DataError:
    """Why a table could not be read in partitions (by a Dask silo), as load_table says it."""
    if isinstance(exc, UnicodeDecodeError):  # a worker's decode error: find the line here
        return DataError(_not_utf8(path))
    return DataError(f"{path}: cannot read the table in partitions ({exc})")


def _not_utf8(path: Path) -> str:
    """Where a CSV stops being UTF-8 (pandas' byte position counts from its read buffer)."""
    with open(path, "rb") as fh:
        for number, line in enumerate(fh, start=1):
            try:
                line.decode("utf-8")
            except UnicodeDecodeError as exc:
                byte = line[exc.start]
                return (
                    f"{path}: cannot read it as csv: line {number} is not UTF-8 text (byte "
                    f"0x{byte:02x}); save the file as UTF-8 (Excel: Save As, 'CSV UTF-8')"
                )
    return f"{path}: cannot read it as csv: not UTF-8 text; save the file as UTF-8"


def target_labels(df: pd.DataFrame, contract: Contract, source: object = None) -> np.ndarray:
    """The labels the model learns, by the contract's task.

    binary: int64 0/1 under the positive rule, e.g. ``num > 0``; multiclass: int64 index of
    the value in `contract.classes`; regression: float64 values.

    Parameters
    ----------
    source
        The file the rows came from, named in errors (optional).

    Raises
    ------
    DataError
        The target column is absent, has missing values, holds a class the contract does not
        list (multiclass) or values that are not numbers (regression).
    """
    where = f"{source}: " if source is not None else ""
    column = contract.target.column
    if column not in df.columns:
        raise DataError(
            f"{where}the table has no target column {column!r} (contract {contract.name})"
        )
    values = df[column]
    missing = int(values.isna().sum())
    if missing:
        raise DataError(
            f"{where}target column {column!r} has {missing} missing values; drop those rows first"
        )
    if contract.task == "multiclass":
        return _class_indices(values, contract, where)
    if contract.task == "regression":
        numbers = pd.to_numeric(values, errors="coerce")
        bad = numbers.isna()
        if bad.any():
            examples = sorted({str(v) for v in values[bad].head(3)})
            raise DataError(
                f"{where}regression target {column!r} holds {int(bad.sum())} values that are "
                "not numbers",
                examples=examples,
            )
        return numbers.to_numpy(dtype=np.float64)
    if contract.column(column).type == "boolean":
        unknown = [v for v in values.unique() if boolean_text(v) is None]
        if unknown:
            raise DataError(
                f"{where}boolean target column {column!r} holds {int(values.isin(unknown).sum())}"
                f" values that are not true/false (or 1/0, yes/no), e.g. "
                f"{sorted(str(v) for v in unknown[:3])}"
            )
    return positive_mask(values, contract).astype(np.int64)


def positive_mask(values: pd.Series, contract: Contract) -> np.ndarray:
    """Which values of a binary target are positive under the contract's `positive_if`.

    A boolean target column is read as the gate reads it (True, 1, "yes" ... are true; other
    values false), so ``value = 1`` and ``value = true`` pick the rows the gate accepted as true
    whatever spelling a silo's export uses.
    """
    rule = contract.target.positive_if
    assert rule is not None  # the contract requires a positive rule for a binary target
    data, value = values.to_numpy(), rule.value
    if contract.column(contract.target.column).type == "boolean" and boolean_text(value):
        truth = {v: boolean_text(v) == "true" for v in values.unique()}
        data, value = values.map(truth).to_numpy(dtype=bool), boolean_text(value) == "true"
    return np.asarray(_COMPARE[rule.op](data, value), dtype=bool)


def binary_target(df: pd.DataFrame, contract: Contract) -> np.ndarray:
    """The 0/1 target of a binary contract (kept for callers of the binary-only API)."""
    return target_labels(df, contract)


def _class_indices(values: pd.Series, contract: Contract, where: str) -> np.ndarray:
    """Each value's index in `contract.classes`, matched as text so 1, 1.0 and "1" agree."""
    index = {_class_key(c): i for i, c in enumerate(contract.classes)}
    keys = [_class_key(v) for v in values.tolist()]
    unknown = sorted({str(v) for v, k in zip(values.tolist(), keys, strict=True) if k not in index})
    if unknown:
        raise DataError(
            f"{where}target column {contract.target.column!r} holds classes the contract does "
            f"not list: {unknown[:5]}; its classes are {list(contract.classes)}"
        )
    return np.array([index[k] for k in keys], dtype=np.int64)


def _class_key(value: object) -> str:
    if isinstance(value, bool | np.bool_):
        return str(bool(value)).lower()
    if isinstance(value, int | float | np.integer | np.floating):
        number = float(value)
        return str(int(number)) if number.is_integer() else repr(number)
    text = str(value).strip()
    if text.lower() in ("true", "false"):
        return text.lower()
    try:
        return _class_key(float(text))
    except ValueError:
        return text


def split_train_test(
    df: pd.DataFrame, contract: Contract, test_fraction: float, seed: int
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Split rows into train and test sets, stratified on the class (classification tasks).

    The same table, fraction and seed always give the same split. Regression rows are split
    without stratification.

    Raises
    ------
    DataError
        The fraction is outside (0, 1), or a class has too few rows to stratify.
    """
    if not 0.0 < test_fraction < 1.0:
        raise DataError(f"test_fraction must be between 0 and 1, got {test_fraction}")
    y = target_labels(df, contract)
    stratify = None
    if contract.task != "regression":
        counts = np.bincount(y, minlength=len(contract.classes))
        if counts.min() < 2:
            if contract.task == "binary":
                per_class = f"the table has {counts[0]} negative and {counts[1]} positive rows"
            else:
                per_class = f"rows per class of {contract.target.column!r} are " + ", ".join(
                    f"{c}: {n}" for c, n in zip(contract.classes, counts, strict=True)
                )
            raise DataError(f"cannot stratify: {per_class}; each class needs at least 2")
        stratify = y
    try:  # scikit-learn's draw without importing it (silos.split: lean agents)
        train, test = split_indices(len(df), test_fraction, seed, stratify)
    except SplitError as exc:
        raise DataError(
            f"cannot split {len(df)} rows with test_fraction={test_fraction}: {exc}"
        ) from exc
    return df.iloc[train], df.iloc[test]
