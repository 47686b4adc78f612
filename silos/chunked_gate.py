"""The validation gate by chunks, for a table on the silo's Dask cluster (`silos.compute`).

`run_chunked_gate` runs the contract's Great Expectations suite and the gate's pandas checks
(`silos.gate`) on one partition at a time, in the agent's process (GX needs more memory than
a small Dask worker has, and the agent keeps it loaded), and combines what each partition
tells into one `GateResult` with the verdict the whole table would get:

* counted expectations (values between, in a set, not null): unexpected counts summed, their
  share taken over the summed present (or, for not-null, all) rows, and ``mostly`` applied to
  the total; the table's row count summed against ``min_rows``;
* uniqueness and repeated rows across partitions, by 64-bit hashes of the values (of the
  declared columns' rows) kept per partition: 8 bytes a row, never the values;
* reference means and standard deviations from per-partition moments (Chan's pairwise
  update, sample std as GX computes it); category shares and rows per class from summed counts;
* column set and dtypes: every partition must pass; the first failure is reported.

Only one partition is in this process at a time (and the next one on its way). GX's data docs
describe one validation of one batch, so a chunked gate writes none (`data_docs` is None).

The fingerprint is of the table as read in partitions: the sha256 of the partitions'
`fingerprint_table` digests in order, under its own version tag. It differs from the pandas
fingerprint of the same file; a Dask silo uses it on both sides (validated and trained rows).
"""

from __future__ import annotations

import hashlib
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from schemas.contracts import Contract
from schemas.contracts.gx_suite import build_suite, validation_view
from schemas.wire import ExpectationOutcome
from silos.compute import ComputeSection, dask_client, read_partitions
from silos.gate import (
    GateResult,
    class_counts,
    class_verdict,
    fingerprint_table,
    frequency_verdict,
    gate_result,
    pandas_checks,
)

CHUNKED_FINGERPRINT_VERSION = b"fedsilo-table-chunks-v1"
_COUNTED = (
    "expect_column_values_to_be_between",
    "expect_column_values_to_be_in_set",
    "expect_column_values_to_not_be_null",
)
_REFERENCE = ("expect_column_mean_to_be_between", "expect_column_stdev_to_be_between")


@dataclass
class _Facts:
    """What the partitions told so far: counts, moments and hashes, never a value."""

    outcomes: list[tuple[ExpectationOutcome, ...]] = field(default_factory=list)
    checks: list[tuple[ExpectationOutcome, ...]] = field(default_factory=list)
    rows: list[int] = field(default_factory=list)
    present: list[dict[str, int]] = field(default_factory=list)
    moments: dict[str, tuple[int, float, float]] = field(default_factory=dict)  # n, mean, M2
    unique: dict[str, list[np.ndarray]] = field(default_factory=dict)
    row_hashes: list[np.ndarray] = field(default_factory=list)
    shares: dict[str, dict[str, int]] = field(default_factory=dict)
    classes: dict[str, int] = field(default_factory=dict)
    digest: Any = field(default_factory=lambda: hashlib.sha256(CHUNKED_FINGERPRINT_VERSION))


def partitions(client: Any, table: Any) -> Iterator[pd.DataFrame]:
    """The partitions of a dask DataFrame in order, one fetched while the previous is used."""
    parts = table.to_delayed()
    ahead = client.compute(parts[0]) if parts else None
    for i in range(len(parts)):
        current, ahead = ahead, client.compute(parts[i + 1]) if i + 1 < len(parts) else None
        assert current is not None
        yield current.result()
        current.release()


def chunked_fingerprint(client: Any, table: Any) -> str:
    """The fingerprint `run_chunked_gate` gives the partitions of `table`, computed on the
    workers: a gate can tell an unchanged table without reading it here."""
    import dask

    sha = dask.delayed(fingerprint_table, pure=True)
    digest = hashlib.sha256(CHUNKED_FINGERPRINT_VERSION)
    for part_sha in client.gather(client.compute([sha(p) for p in table.to_delayed()])):
        digest.update(part_sha.encode())
    return digest.hexdigest()


def gate_on_dask(
    compute: ComputeSection, path: Path, contract: Contract, *, silo: str, workspace: Path
) -> GateResult:
    """The gate of the table file at `path`, read in partitions on the silo's Dask cluster
    (`silos.compute`): what `silos.round_gate` runs instead of `run_gate` when
    `uses_dask(config.compute, path)`."""
    with dask_client(compute) as client:
        table = read_partitions(path, None, compute.partition_bytes)
        return run_chunked_gate(partitions(client, table), contract, silo=silo, workspace=workspace)


def run_chunked_gate(
    chunks: Iterator[pd.DataFrame], contract: Contract, *, silo: str, workspace: Path
) -> GateResult:
    """Validate a table given as consecutive chunks of rows; the same verdict as `run_gate`
    on the whole table. Never raises for bad data."""
    from silos.gx_runner import validate  # GX imports slowly; only the gate needs it

    facts = _Facts()
    with tempfile.TemporaryDirectory(prefix="fedsilo-chunk-docs-") as scratch:
        for i, chunk in enumerate(chunks):
            view = validation_view(chunk, contract)
            docs = Path(scratch) / str(i)
            outcomes, _ = validate(view, build_suite(contract), silo=silo, docs_dir=docs)
            facts.outcomes.append(outcomes)
            facts.checks.append(pandas_checks(chunk, view, contract))
            _collect(facts, chunk, view, contract)
    if not facts.rows:
        empty = ExpectationOutcome(expectation="read_table", success=False, detail="no rows")
        return gate_result(silo, contract, "", 0, (empty,), None)
    outcomes = _combined_suite(facts, contract) + _combined_checks(facts, contract)
    return gate_result(silo, contract, facts.digest.hexdigest(), sum(facts.rows), outcomes, None)


def _collect(facts: _Facts, chunk: pd.DataFrame, view: pd.DataFrame, contract: Contract) -> None:
    facts.digest.update(fingerprint_table(chunk).encode())
    facts.rows.append(len(chunk))
    facts.present.append({str(c): int(view[c].notna().sum()) for c in view.columns})
    for col in contract.columns:
        if col.name not in view.columns:
            continue
        values = view[col.name]
        if col.unique:
            present = values.dropna()
            facts.unique.setdefault(col.name, []).append(_hashes(present))
        if col.reference is not None and col.reference.mean is not None:
            numbers = pd.to_numeric(values, errors="coerce").dropna().to_numpy(np.float64)
            facts.moments[col.name] = _merge(facts.moments.get(col.name), numbers)
        if col.reference is not None and col.reference.frequencies is not None:
            counts = values.dropna().astype(str).value_counts()
            seen = facts.shares.setdefault(col.name, {})
            for level, n in counts.items():
                seen[str(level)] = seen.get(str(level), 0) + int(n)
    if not contract.allow_duplicate_rows:
        declared = [c.name for c in contract.columns if c.name in chunk.columns]
        if declared:
            facts.row_hashes.append(_hashes(chunk[declared]))
    target = contract.target.column
    if contract.task != "regression" and target in chunk.columns:
        try:
            for label, n in class_counts(chunk[target].dropna(), contract).items():
                facts.classes[label] = facts.classes.get(label, 0) + n
        except TypeError:
            pass  # the per-partition check already reports it


def _hashes(data: pd.Series | pd.DataFrame) -> np.ndarray:
    try:
        return pd.util.hash_pandas_object(data, index=False).to_numpy()
    except TypeError:  # unhashable cells: hash their text, as silos.gate does
        return pd.util.hash_pandas_object(data.astype(str), index=False).to_numpy()


def _merge(old: tuple[int, float, float] | None, values: np.ndarray) -> tuple[int, float, float]:
    """Chan et al.'s pairwise update of (count, mean, sum of squared deviations)."""
    n_b = len(values)
    mean_b = float(values.mean()) if n_b else 0.0
    m2_b = float(((values - mean_b) ** 2).sum()) if n_b else 0.0
    if old is None or old[0] == 0:
        return n_b, mean_b, m2_b
    n_a, mean_a, m2_a = old
    n = n_a + n_b
    delta = mean_b - mean_a
    return n, mean_a + delta * n_b / n, m2_a + m2_b + delta * delta * n_a * n_b / n


def _repeats(hashes: list[np.ndarray]) -> tuple[int, int]:
    """(rows whose hash another row shares, rows after the first of each hash)."""
    if not hashes:
        return 0, 0
    _, counts = np.unique(np.concatenate(hashes), return_counts=True)
    shared = counts[counts > 1]
    return int(shared.sum()), int((shared - 1).sum())


def _combined_suite(facts: _Facts, contract: Contract) -> tuple[ExpectationOutcome, ...]:
    from silos.gx_runner import combined_detail

    for outcomes in facts.outcomes:
        if any(o.expectation == "run_suite" for o in outcomes):
            return outcomes  # GX could not run the suite on a partition
    kwargs = {
        (e.configuration.type, e.configuration.kwargs.get("column")): e.configuration
        for e in build_suite(contract).expectations
    }
    total_rows = sum(facts.rows)
    out = []
    for i, first in enumerate(facts.outcomes[0]):
        per_chunk = [outcomes[i] for outcomes in facts.outcomes]
        config = kwargs.get((first.expectation, first.column))
        kind, column = first.expectation, first.column
        raw_failure = next((o for o in per_chunk if o.unexpected_count is None), None)
        if config is None or kind not in (
            *_COUNTED,
            *_REFERENCE,
            "expect_column_values_to_be_unique",
            "expect_table_row_count_to_be_between",
        ):
            out.append(next((o for o in per_chunk if not o.success), first))
        elif kind == "expect_table_row_count_to_be_between":
            minimum = config.kwargs.get("min_value")
            ok = minimum is None or total_rows >= minimum
            detail = f"{total_rows} rows; the contract needs at least {minimum}"
            out.append(first.model_copy(update={"success": ok, "detail": detail}))
        elif kind in _REFERENCE:
            out.append(_reference(facts, first, config, combined_detail))
        elif raw_failure is not None:
            out.append(raw_failure)  # a column absent or of a wrong type in a partition
        else:
            assert column is not None
            if kind == "expect_column_values_to_be_unique":
                count = _repeats(facts.unique.get(column, []))[0]
            else:
                count = sum(o.unexpected_count or 0 for o in per_chunk)
            if kind == "expect_column_values_to_not_be_null":
                denominator = total_rows
            else:
                denominator = sum(p.get(column, 0) for p in facts.present)
            percent = 100.0 * count / denominator if denominator else None
            mostly = float(config.kwargs.get("mostly", 1.0) or 1.0)
            ok = denominator == 0 or (denominator - count) / denominator >= mostly
            raw = {"unexpected_count": count, "unexpected_percent": percent}
            detail = combined_detail(kind, dict(config.kwargs), raw, pd.DataFrame())
            out.append(
                first.model_copy(
                    update={
                        "success": ok,
                        "warning": False,
                        "unexpected_count": count,
                        "unexpected_percent": percent,
                        "detail": detail,
                    }
                )
            )
    return tuple(out)


def _reference(
    facts: _Facts, first: ExpectationOutcome, config: Any, detail_of: Any
) -> ExpectationOutcome:
    """A reference mean or std from the summed moments, with GX's warning severity."""
    column = first.column
    assert column is not None
    n, mean, m2 = facts.moments.get(column, (0, 0.0, 0.0))
    if n < 2:
        update = {
            "success": True,
            "warning": False,
            "detail": "fewer than 2 present values: nothing to compare",
        }
        return first.model_copy(update=update)
    observed = mean if first.expectation == _REFERENCE[0] else float(np.sqrt(m2 / (n - 1)))
    low, high = config.kwargs.get("min_value"), config.kwargs.get("max_value")
    ok = low <= observed <= high
    warning = not ok and str(getattr(config, "severity", "")) in (
        "warning",
        "FailureSeverity.WARNING",
    )
    detail = detail_of(first.expectation, dict(config.kwargs), {"observed_value": observed}, None)
    return first.model_copy(update={"success": ok or warning, "warning": warning, "detail": detail})


def _combined_checks(facts: _Facts, contract: Contract) -> tuple[ExpectationOutcome, ...]:
    out = []
    total_rows = sum(facts.rows)
    for i, first in enumerate(facts.checks[0]):
        per_chunk = [checks[i] for checks in facts.checks]
        kind = first.expectation
        if kind == "table_rows_to_be_distinct":
            out.append(_distinct_rows(facts, contract, first, total_rows))
        elif kind == "column_frequencies_near_reference" and first.column in facts.shares:
            out.append(_frequencies(facts, contract, first))
        elif kind == "target_classes_present" and facts.classes:
            out.append(_classes(facts, contract, first))
        else:  # an absent column or an incomparable target: every partition reports it
            out.append(next((o for o in per_chunk if not o.success), first))
    return tuple(out)


def _distinct_rows(
    facts: _Facts, contract: Contract, first: ExpectationOutcome, total_rows: int
) -> ExpectationOutcome:
    distinct_key = any(
        c.unique
        and c.name in facts.unique
        and sum(len(h) for h in facts.unique[c.name]) == total_rows
        and _repeats(facts.unique[c.name])[0] == 0
        for c in contract.columns
    )
    repeats = 0 if distinct_key else _repeats(facts.row_hashes)[1]
    percent = 100.0 * repeats / total_rows if total_rows else 0.0
    detail = (
        f"{repeats} ({percent:.2f}%) rows repeat an earlier row in every declared column; "
        "allow_duplicate_rows = false"
    )
    update = {
        "success": repeats == 0,
        "unexpected_count": repeats,
        "unexpected_percent": percent,
        "detail": detail,
    }
    return first.model_copy(update=update)


def _frequencies(
    facts: _Facts, contract: Contract, first: ExpectationOutcome
) -> ExpectationOutcome:
    column = first.column
    assert column is not None
    counts = facts.shares[column]
    total = sum(counts.values())
    if total == 0:
        detail = "no present values to compare"
        return first.model_copy(update={"success": True, "warning": False, "detail": detail})
    ref = contract.column(column).reference
    assert ref is not None and ref.frequencies is not None
    shares = {k: n / total for k, n in counts.items()}
    success, warning, detail = frequency_verdict(
        shares, ref.frequencies, ref.frequency_tolerance, contract
    )
    return first.model_copy(update={"success": success, "warning": warning, "detail": detail})


def _classes(facts: _Facts, contract: Contract, first: ExpectationOutcome) -> ExpectationOutcome:
    rare, detail = class_verdict(facts.classes, contract.min_class_rows)
    update = {"success": not rare, "unexpected_count": rare, "detail": detail}
    return first.model_copy(update=update)
