"""The validation gate: the first step of every round at a silo.

`run_gate(table, contract, silo=..., workspace=...)` fingerprints the table and the contract,
validates the table with the contract's Great Expectations suite (GX 1.x, an ephemeral
in-memory context, pandas) and returns a `GateResult`: the `ValidationSummary` that goes to
the service (counts and percentages only, never a value or a row) and the path of GX's HTML
data docs for this validation, written under ``workspace/data_docs/`` for the operator.
Bad data never raises here: it yields a failed summary. A table that cannot even be read
raises `DataError` in `silos.data.load_table`; `summary_for_load_error` turns that into a
failed summary too.

Three checks run here in pandas and join the same outcome list, in the same shape: unless
the contract sets ``allow_duplicate_rows``, rows identical in every declared column
(``table_rows_to_be_distinct``, by a row hash: far faster than GX's compound check); category
shares against the contract's reference frequencies (``column_frequencies_near_reference``; a
warning only when ``on_drift = "warn"``); and, for classification, rows per class
(``target_classes_present``: every class needs ``min_class_rows`` rows, or training and the
stratified split fail every round).

The fingerprint (`fingerprint_table`) is the sha256 of a canonical form of the table:

- columns sorted by name (their text); for each, its name and then its values;
- rows in their original order (the train/test split depends on it); the index is ignored;
- numeric columns (integer, float, nullable, not boolean): every value as a little-endian
  float64, so 1 and 1.0 agree (a CSV and a Parquet copy of the same table match), -0.0 as
  0.0, and a separate mask of missing cells (NaN, None, NA);
- every other column: JSON of its values in order, missing cells as null, booleans as
  true/false, numbers as float64 (JSON repr), text as itself, anything else as its str().
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from schemas.canonical import canonical_json
from schemas.contracts import Contract
from schemas.contracts.gx_suite import build_suite, validation_view
from schemas.wire import READ_TABLE, ExpectationOutcome, ValidationSummary
from silos.data import name_list, positive_mask
from silos.exceptions import DataError

log = logging.getLogger(__name__)

DATA_DOCS_DIR = "data_docs"
FINGERPRINT_VERSION = b"fedsilo-table-v1"


@dataclass(frozen=True)
class GateResult:
    """The outcome of the gate at one silo.

    Attributes
    ----------
    summary
        What the service receives: fingerprints, counts, the failed expectations.
    outcomes
        Every expectation, passed or failed (the operator's table in ``fedsilo silo check``).
    data_docs
        GX's HTML page for this validation, or None when it could not be written.
    """

    silo: str
    summary: ValidationSummary
    outcomes: tuple[ExpectationOutcome, ...]
    data_docs: Path | None

    @property
    def success(self) -> bool:
        return self.summary.success


def fingerprint_table(df: pd.DataFrame) -> str:
    """sha256 (hex) of the table's canonical form; see the module docstring."""
    digest = hashlib.sha256(FINGERPRINT_VERSION)
    digest.update(f"rows={len(df)};columns={df.shape[1]};".encode())
    order = sorted(range(df.shape[1]), key=lambda i: str(df.columns[i]))
    for i in order:
        name = str(df.columns[i]).encode("utf-8")
        digest.update(len(name).to_bytes(8, "little") + name)
        for chunk in _canonical_column(df.iloc[:, i]):
            digest.update(len(chunk).to_bytes(8, "little") + chunk)
    return digest.hexdigest()


def _canonical_column(series: pd.Series) -> list[bytes]:
    if pd.api.types.is_numeric_dtype(series) and not pd.api.types.is_bool_dtype(series):
        values = series.to_numpy(dtype=np.float64, na_value=np.nan)
        missing = np.isnan(values)
        filled = np.where(missing, 0.0, values) + 0.0  # + 0.0 turns -0.0 into 0.0
        return [b"f8", np.packbits(missing).tobytes(), filled.astype("<f8").tobytes()]
    if isinstance(series.dtype, pd.StringDtype):
        # text columns (pandas' str dtype) hold only str or missing: skip the per-cell checks
        cells = series.astype(object).where(series.notna(), None).tolist()
    else:
        cells = [_canonical_cell(v) for v in series.tolist()]
    text = json.dumps(cells, ensure_ascii=False, separators=(",", ":"))
    return [b"json", text.encode("utf-8", "surrogatepass")]


def _canonical_cell(value: Any) -> Any:
    if value is None or value is pd.NA or value is pd.NaT:
        return None
    if isinstance(value, bool | np.bool_):
        return bool(value)
    if isinstance(value, int | float | np.integer | np.floating):
        number = float(value)
        return None if math.isnan(number) else number + 0.0
    if isinstance(value, str):
        return value
    return f"{type(value).__name__}:{value}"


def contract_sha256(contract: Contract) -> str:
    """sha256 (hex) of the contract's content as canonical JSON (comments do not count)."""
    return hashlib.sha256(canonical_json(contract.model_dump(mode="json")).encode()).hexdigest()


def run_gate(table: pd.DataFrame, contract: Contract, *, silo: str, workspace: Path) -> GateResult:
    """Validate `table` against `contract`; never raises for bad data.

    Parameters
    ----------
    table
        The silo's whole table, as `silos.data.load_table` read it.
    contract
        The federation's data contract.
    silo
        The silo's name, for the data docs and logs.
    workspace
        The silo's workspace; the data docs go to ``workspace/data_docs/`` (replaced on
        every run, so they always show the last validation).

    Returns
    -------
    GateResult
        ``result.summary.success`` is False when any expectation failed.
    """
    from silos.gx_runner import validate  # GX imports slowly; only the gate needs it

    fingerprint = fingerprint_table(table)
    duplicated = sorted({str(c) for c in table.columns[table.columns.astype(str).duplicated()]})
    if duplicated:
        outcome = ExpectationOutcome(
            expectation="expect_table_columns_to_match_set",
            success=False,
            detail=f"columns named more than once: {name_list(duplicated)}",
        )
        return gate_result(silo, contract, fingerprint, len(table), (outcome,), None)
    view = validation_view(table, contract)
    docs_dir = Path(workspace) / DATA_DOCS_DIR
    outcomes, docs = validate(view, build_suite(contract), silo=silo, docs_dir=docs_dir)
    outcomes += pandas_checks(table, view, contract)
    return gate_result(silo, contract, fingerprint, len(table), outcomes, docs)


def pandas_checks(
    table: pd.DataFrame, view: pd.DataFrame, contract: Contract
) -> tuple[ExpectationOutcome, ...]:
    """The checks GX lacks (see the module docstring), as outcomes; never raises for bad data."""
    out = [] if contract.allow_duplicate_rows else [_duplicate_rows_outcome(table, contract)]
    out += [
        _frequency_outcome(view, col.name, col.reference.frequencies, contract)
        for col in contract.columns
        if col.reference is not None and col.reference.frequencies is not None
    ]
    if contract.task != "regression":
        out.append(_class_outcome(table, contract))
    return tuple(out)


def _duplicate_rows_outcome(table: pd.DataFrame, contract: Contract) -> ExpectationOutcome:
    declared = [c.name for c in contract.columns if c.name in table.columns]
    if any(_distinct(table, c.name) for c in contract.columns if c.unique):
        repeats = 0  # a unique column with no repeat and no gap: no two rows can be equal
    elif declared:
        # 64-bit row hashes: a false duplicate needs a collision (about 1 in 10^7 at 10^6 rows).
        try:
            hashes = pd.util.hash_pandas_object(table[declared], index=False)
        except TypeError:  # unhashable cells (lists in a Parquet column): hash their text
            hashes = pd.util.hash_pandas_object(table[declared].astype(str), index=False)
        repeats = int(hashes.duplicated().sum())
    else:
        repeats = 0
    percent = 100.0 * repeats / len(table) if len(table) else 0.0
    return ExpectationOutcome(
        expectation="table_rows_to_be_distinct",
        success=repeats == 0,
        unexpected_count=repeats,
        unexpected_percent=percent,
        detail=f"{repeats} ({percent:.2f}%) rows repeat an earlier row in every declared column; "
        "allow_duplicate_rows = false",
    )


def _distinct(table: pd.DataFrame, column: str) -> bool:
    if column not in table.columns:
        return False
    values = table[column]
    try:
        return bool(values.notna().all() and values.is_unique)
    except TypeError:  # unhashable cells: let the row hash decide
        return False


def _frequency_outcome(
    view: pd.DataFrame, column: str, reference: dict[str, float], contract: Contract
) -> ExpectationOutcome:
    kind = "column_frequencies_near_reference"
    if column not in view.columns:
        detail = "column absent from the table"
        return ExpectationOutcome(expectation=kind, column=column, success=False, detail=detail)
    shares = view[column].dropna().astype(str).value_counts(normalize=True)
    if shares.empty:
        detail = "no present values to compare"
        return ExpectationOutcome(expectation=kind, column=column, success=True, detail=detail)
    tolerance = contract.column(column).reference.frequency_tolerance  # type: ignore[union-attr]
    observed = {k: float(v) for k, v in shares.items()}
    success, warning, detail = frequency_verdict(observed, reference, tolerance, contract)
    return ExpectationOutcome(
        expectation=kind, column=column, success=success, warning=warning, detail=detail
    )


def frequency_verdict(
    shares: dict[str, float], reference: dict[str, float], tolerance: float, contract: Contract
) -> tuple[bool, bool, str]:
    """(success, warning, detail) of observed category `shares` against the contract's
    reference shares (whole-table and chunked gate alike); drift within `on_drift = "warn"`
    passes with a warning."""
    gaps = {k: abs(shares.get(k, 0.0) - share) for k, share in reference.items()}
    worst = max(gaps, key=lambda k: gaps[k])
    # Names only a category the contract lists, and shares: never a cell value.
    detail = (
        f"share of {worst!r} {shares.get(worst, 0.0):.3f}, reference "
        f"{reference[worst]:.3f}: off by {gaps[worst]:.3f}; tolerance {tolerance:g}"
    )
    passed = gaps[worst] <= tolerance
    warning = not passed and contract.on_drift == "warn"
    return passed or warning, warning, detail


def _class_outcome(table: pd.DataFrame, contract: Contract) -> ExpectationOutcome:
    kind, column = "target_classes_present", contract.target.column
    if column not in table.columns:
        detail = "target column absent from the table"
        return ExpectationOutcome(expectation=kind, column=column, success=False, detail=detail)
    try:
        counts = class_counts(table[column].dropna(), contract)
    except TypeError:
        detail = f"the target's values cannot be compared with the contract's {contract.task} rule"
        return ExpectationOutcome(expectation=kind, column=column, success=False, detail=detail)
    rare, detail = class_verdict(counts, contract.min_class_rows)
    return ExpectationOutcome(
        expectation=kind, column=column, success=not rare, unexpected_count=rare, detail=detail
    )


def class_verdict(counts: dict[str, int], need: int) -> tuple[int, str]:
    """(how many classes have fewer than `need` rows, detail) of the rows per class
    (whole-table and chunked gate alike); the detail lists at most ten classes."""
    rare = {label: n for label, n in counts.items() if n < need}
    shown = rare or counts
    listing = ", ".join(f"class {label}: {n} rows" for label, n in list(shown.items())[:10])
    detail = (
        f"{listing}; every class needs at least {need} (min_class_rows)"
        if rare
        else f"smallest class {min(counts.values())} rows; {need} needed"
    )
    return len(rare), detail


def class_counts(target: pd.Series, contract: Contract) -> dict[str, int]:
    """Rows per class label of the contract's task: binary "0"/"1", multiclass its classes."""
    if contract.task == "binary":
        positive = int(positive_mask(target, contract).sum())  # as training reads the rule
        return {"0": len(target) - positive, "1": positive}
    numeric = pd.api.types.is_numeric_dtype(target)
    text = None if numeric else target.astype(str)
    counts = {}
    for label in contract.classes:
        # TOML's 4 arrives as 4.0 (the values are bool | float | str): name it "4"
        name = str(int(label)) if isinstance(label, float) and label.is_integer() else str(label)
        if numeric and isinstance(label, int | float):
            counts[name] = int((target == label).sum())
        else:
            values = text if text is not None else target.astype(str)
            counts[name] = int((values == str(label)).sum())
    return counts


def gate_result(
    silo: str,
    contract: Contract,
    fingerprint: str,
    n_rows: int,
    outcomes: tuple[ExpectationOutcome, ...],
    docs: Path | None,
) -> GateResult:
    """The verdict on `outcomes` (whole-table or chunked gate alike); failures are logged."""
    failed = [o for o in outcomes if not o.success]
    summary = ValidationSummary(
        contract=contract.name,
        contract_version=contract.version,
        contract_sha256=contract_sha256(contract),
        data_sha256=fingerprint,
        n_rows=n_rows,
        n_expectations=len(outcomes),
        success=not failed,
        failed=failed,
        warnings=[o for o in outcomes if o.warning],  # drift the contract tolerates
    )
    if failed:
        log.warning("silo %s: %s", silo, summary.reason())
    return GateResult(silo=silo, summary=summary, outcomes=outcomes, data_docs=docs)


def summary_for_load_error(exc: DataError, contract: Contract) -> ValidationSummary:
    """A failed summary for a table that could not be read (missing, empty, unparsable file).

    The detail is the `DataError` message: it names the file and the reader's reason (a line
    number, an empty file), never a row; `ValidationSummary.reason` carries it, so that the
    round's decline says which file. No table means no fingerprint: ``data_sha256`` is
    the empty string and ``n_rows`` 0.
    """
    return ValidationSummary(
        contract=contract.name,
        contract_version=contract.version,
        contract_sha256=contract_sha256(contract),
        data_sha256="",
        n_rows=0,
        n_expectations=0,
        success=False,
        failed=[
            ExpectationOutcome(
                expectation=READ_TABLE, success=False, detail=str(exc)[:500] or "unreadable"
            )
        ],
    )
