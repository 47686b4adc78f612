"""The Great Expectations suite of a data contract, derived from it and never kept by hand.

`build_suite(contract)` returns a GX 1.x `ExpectationSuite`; `suite_json(contract)` its JSON
(without GX's random ids, so the same contract always gives the same text). The suite checks
the *validation view* of a table (`validation_view`), in which the contract's missing-value
rules are already applied, so GX's null counts are the contract's missing counts.

Expectations, in order:

- table: ``expect_table_columns_to_match_set`` over every declared column, order-insensitive.
  Extra columns fail it unless the contract sets ``allow_extra_columns = true``: an
  undeclared column usually means a silo's export changed (a renamed or added field, perhaps
  an identifier that should not be there), which the operator must look at before training.
  ``expect_table_row_count_to_be_between`` with ``min_value = min_rows``.
- numeric column: ``expect_column_values_to_be_in_type_list`` (integer or float dtypes; a
  column holding text fails it), ``expect_column_values_to_be_between`` the contract range
  with ``mostly = 1 - max_out_of_range_fraction`` (GX counts the share of present values).
- categorical or boolean column: ``expect_column_values_to_be_in_set`` of the contract's
  categories (booleans: ``"false"``/``"true"``), ``mostly = 1``. This is the type check of a
  discrete column: a value of another type is not one of its categories.
- every column that may not be missing entirely: ``expect_column_values_to_not_be_null`` with
  ``mostly = 1 - max_missing_fraction``; the target may never be missing.
- target: ``expect_column_values_to_be_in_set`` of the contract's target `values` (a boolean
  target's as ``"false"``/``"true"``, as the view holds them).
- identifier column: only the null check above (its values are free).
- ``unique = true``: ``expect_column_values_to_be_unique`` (GX counts every row whose value
  occurs more than once; no value is reported).
- numeric ``reference``: ``expect_column_mean_to_be_between`` and
  ``expect_column_stdev_to_be_between`` the reference's bounds, with GX severity "warning"
  when the contract says ``on_drift = "warn"``.

Checks GX has no expectation for (category shares against reference frequencies, rows per
class) or does too slowly (duplicate whole rows: GX's compound-uniqueness check doubled the
gate's time on a million rows; a row hash takes a tenth of it) run in pandas in `silos.gate`
and join the same outcome list.

The validation view, per declared column present in the table (pandas' nullable Int64,
Float64 and boolean dtypes first become numpy's, missing values NaN):

- numeric dtype: sentinels become NaN; other dtypes are left as they are, so the type
  expectation fails and names the column;
- categorical: each value as text (``1`` -> ``"1"``, as the feature pipeline reads it);
  sentinels, and unknown categories where ``on_unknown = "missing"``, become NaN;
- boolean: the spellings the pipeline accepts (True/False, 1/0, "yes"/"no", ...) become
  ``"false"``/``"true"``; other values stay as text and fail the set; sentinels become NaN.
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np
import pandas as pd

from schemas.contracts.loader import Column, Contract

# Loaded on first use: importing great_expectations takes seconds, and most users of the
# contracts (the service, the feature pipeline) never build a suite.
_gx: Any = None
_gxe: Any = None

NUMERIC_TYPES = (
    "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64",
    "Int8", "Int16", "Int32", "Int64", "UInt8", "UInt16", "UInt32", "UInt64",
    "float16", "float32", "float64", "Float32", "Float64",
)  # fmt: skip

# the spellings silos.features accepts for a boolean
_TRUE = {"true", "1", "yes"}
_FALSE = {"false", "0", "no"}


def _load_gx() -> tuple[Any, Any]:
    global _gx, _gxe
    if _gx is None:
        os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")  # read at import
        import great_expectations as gx
        import great_expectations.expectations as gxe

        _gx, _gxe = gx, gxe
    return _gx, _gxe


def build_suite(contract: Contract) -> Any:
    """The contract's expectations as a GX `ExpectationSuite` named after it.

    Parameters
    ----------
    contract
        A data contract.

    Returns
    -------
    great_expectations.ExpectationSuite
        Not yet added to any data context; see the module docstring for its expectations.
    """
    gx, gxe = _load_gx()
    names = [col.name for col in contract.columns]
    expectations = [
        gxe.ExpectTableColumnsToMatchSet(
            column_set=names, exact_match=not contract.allow_extra_columns
        ),
        gxe.ExpectTableRowCountToBeBetween(min_value=contract.min_rows),
    ]
    severity = "warning" if contract.on_drift == "warn" else "critical"
    for col in contract.columns:
        expectations.extend(_column_expectations(gxe, col))
        expectations.extend(_reference_expectations(gxe, col, severity))
    if contract.target.values is not None:
        values: list[object] = list(contract.target.values)
        if contract.column(contract.target.column).type == "boolean":
            values = [boolean_text(v) for v in values]  # as the view holds it: "false"/"true"
        expectations.append(
            gxe.ExpectColumnValuesToBeInSet(column=contract.target.column, value_set=values)
        )
    # Passed to the constructor: ExpectationSuite.add_expectation needs an active context.
    return gx.ExpectationSuite(
        name=f"{contract.name}-v{contract.version}",
        expectations=expectations,
        meta={"contract": contract.name, "contract_version": contract.version},
    )


def _column_expectations(gxe: Any, col: Column) -> list[Any]:
    out = []
    if col.type == "numeric":
        out.append(gxe.ExpectColumnValuesToBeInTypeList(column=col.name, type_list=NUMERIC_TYPES))
        if col.range is not None:
            out.append(
                gxe.ExpectColumnValuesToBeBetween(
                    column=col.name,
                    min_value=col.range[0],
                    max_value=col.range[1],
                    mostly=1.0 - col.max_out_of_range_fraction,
                )
            )
    elif col.type != "identifier":
        out.append(gxe.ExpectColumnValuesToBeInSet(column=col.name, value_set=_levels(col)))
    if col.max_missing_fraction < 1.0:
        out.append(
            gxe.ExpectColumnValuesToNotBeNull(
                column=col.name, mostly=1.0 - col.max_missing_fraction
            )
        )
    if col.unique:
        out.append(gxe.ExpectColumnValuesToBeUnique(column=col.name))
    return out


def _reference_expectations(gxe: Any, col: Column, severity: str) -> list[Any]:
    ref = col.reference
    if ref is None or ref.mean is None:
        return []  # frequencies: checked in silos.gate (GX has no per-category share check)
    (mean_lo, mean_hi), (std_lo, std_hi) = ref.mean_bounds, ref.std_bounds
    return [
        gxe.ExpectColumnMeanToBeBetween(
            column=col.name, min_value=mean_lo, max_value=mean_hi, severity=severity
        ),
        gxe.ExpectColumnStdevToBeBetween(
            column=col.name, min_value=std_lo, max_value=std_hi, severity=severity
        ),
    ]


def _levels(col: Column) -> list[str]:
    return ["false", "true"] if col.type == "boolean" else [str(c) for c in col.levels]


def suite_json(contract: Contract) -> str:
    """The suite as indented JSON with sorted keys and GX's random ids removed.

    The same contract always gives the same text, so it can be stored beside the contract,
    diffed in review and hashed.
    """
    return json.dumps(_without_ids(build_suite(contract).to_json_dict()), indent=2, sort_keys=True)


def _without_ids(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_ids(v) for k, v in value.items() if k != "id"}
    if isinstance(value, list):
        return [_without_ids(v) for v in value]
    return value


def validation_view(df: pd.DataFrame, contract: Contract) -> pd.DataFrame:
    """The table as the suite checks it: the contract's missing-value rules applied.

    Columns the contract does not declare are kept (the column-set expectation judges them);
    declared columns are converted as the module docstring says. The input is not modified.
    """
    view = df.copy(deep=False)
    view.columns = [str(c) for c in view.columns]
    for col in contract.columns:
        if col.name in view.columns:
            view[col.name] = _view_column(col, _numpy_dtype(view[col.name]))
    return view


def _numpy_dtype(series: pd.Series) -> pd.Series:
    """A nullable column (Int64, Float64, boolean: Parquet's) as numpy's dtype, missing as NaN.

    GX's type check knows only numpy's dtype names: it fails an Int64 column even though
    NUMERIC_TYPES lists Int64.
    """
    dtype = series.dtype
    if not isinstance(dtype, pd.api.extensions.ExtensionDtype) or dtype.kind not in "iufb":
        return series
    if dtype.kind == "b" and series.hasnans:
        return series.astype(object).where(series.notna(), np.nan)
    if dtype.kind == "b":
        return series.astype(bool)
    if series.hasnans or dtype.kind == "f":
        return series.astype("float64")
    return series.astype(dtype.numpy_dtype)


def _view_column(col: Column, series: pd.Series) -> pd.Series:
    if col.type == "identifier":
        return series  # free values: only missing and duplicates are checked
    if col.type == "numeric":
        if pd.api.types.is_numeric_dtype(series) and not pd.api.types.is_bool_dtype(series):
            if col.missing_sentinels:
                return series.mask(series.isin([float(s) for s in col.missing_sentinels]))
        return series
    if isinstance(series.dtype, pd.StringDtype) and col.type == "categorical":
        # text already: only sentinels (and unknowns read as missing) change, to NaN
        distinct = series.dropna().unique()
        to_missing = [v for v in distinct if _view_value(col, v) is np.nan]
        return series.mask(series.isin(to_missing)) if to_missing else series
    try:
        distinct = series.dropna().unique()
    except TypeError:  # unhashable cells (lists in a Parquet column): compare their text
        series = series.map(lambda v: v if _is_missing(v) else str(v))
        distinct = series.dropna().unique()
    # Map each distinct value once: a million rows hold only a handful of categories.
    mapping = {value: _view_value(col, value) for value in distinct}
    return series.map(mapping).astype(object)


def _is_missing(value: object) -> bool:
    return value is None or (isinstance(value, float) and np.isnan(value)) or value is pd.NA


def _view_value(col: Column, value: object) -> object:
    """Mirror of `silos.features` reading one value: a level, NaN (missing) or its text."""
    text = str(value)
    if text in {str(s) for s in col.missing_sentinels}:
        return np.nan
    level = boolean_text(value) if col.type == "boolean" else (text if text in col.levels else None)
    if level is not None:
        return level
    return np.nan if col.on_unknown == "missing" else text


def boolean_text(value: object) -> str | None:
    """A boolean column's value as "true"/"false" (True, 1, "yes" ...), or None for no boolean."""
    if isinstance(value, bool | np.bool_):
        return "true" if value else "false"
    if isinstance(value, int | float | np.integer | np.floating):
        return "true" if value == 1 else "false" if value == 0 else None
    lowered = str(value).strip().lower()
    return "true" if lowered in _TRUE else "false" if lowered in _FALSE else None
