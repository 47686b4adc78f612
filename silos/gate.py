"""The validation gate: the first step of every round at a silo.

`run_gate(table, contract, silo=..., workspace=...)` fingerprints the table and the contract,
validates the table with the contract's Great Expectations suite (GX 1.x, an ephemeral
in-memory context, pandas) and returns a `GateResult`: the `ValidationSummary` that goes to
the service (counts and percentages only, never a value or a row) and the path of GX's HTML
data docs for this validation, written under ``workspace/data_docs/`` for the operator.
Bad data never raises here: it yields a failed summary. A table that cannot even be read
raises `DataError` in `silos.data.load_table`; `summary_for_load_error` turns that into a
failed summary too.

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
from schemas.wire import ExpectationOutcome, ValidationSummary
from silos.exceptions import DataError

log = logging.getLogger(__name__)

DATA_DOCS_DIR = "data_docs"
FINGERPRINT_VERSION = b"fedsilo-table-v1"
_MAX_DETAIL_NAMES = 10


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
            detail=f"columns named more than once: {duplicated[:_MAX_DETAIL_NAMES]}",
        )
        return _result(silo, contract, fingerprint, len(table), (outcome,), None)
    view = validation_view(table, contract)
    docs_dir = Path(workspace) / DATA_DOCS_DIR
    outcomes, docs = validate(view, build_suite(contract), silo=silo, docs_dir=docs_dir)
    return _result(silo, contract, fingerprint, len(table), outcomes, docs)


def _result(
    silo: str,
    contract: Contract,
    fingerprint: str,
    n_rows: int,
    outcomes: tuple[ExpectationOutcome, ...],
    docs: Path | None,
) -> GateResult:
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
    )
    if failed:
        log.warning("silo %s: %s", silo, summary.reason())
    return GateResult(silo=silo, summary=summary, outcomes=outcomes, data_docs=docs)


def summary_for_load_error(exc: DataError, contract: Contract) -> ValidationSummary:
    """A failed summary for a table that could not be read (missing, empty, unparsable file).

    The detail is the `DataError` message: it names the file and the reader's reason (a line
    number, an empty file), never a row. No table means no fingerprint: ``data_sha256`` is
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
                expectation="read_table", success=False, detail=str(exc)[:500] or "unreadable"
            )
        ],
    )
