"""Running a contract's GX suite on a table, and reading the results back without raw values.

An ephemeral GX 1.x data context lives for one validation: a pandas data source, a
whole-dataframe batch definition, the suite and a validation definition, all in memory; the
only file output is the data docs site under the silo's workspace. Analytics and progress
bars are off. Results are read with GX's BASIC result format (counts and percentages) with
every list of values turned off (`RESULT_FORMAT`): no unexpected value, partial list, row or
index reaches an outcome, the validation result, or the data docs rendered from it. The docs
still show column names, dtypes, counts and the contract's own bounds and value sets, so the
folder is kept private anyway (0700 / 0600, with a README saying so).
"""

from __future__ import annotations

import logging
import math
import os
import shutil
from pathlib import Path
from typing import Any

import pandas as pd

from silos.deferred_imports import defer

os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
# GX's KL-divergence expectation imports these at module level; no contract suite uses them
# (about 75 MB an agent would hold idle): they load on first use (silos/deferred_imports.py)
defer("altair", "scipy.stats")

import great_expectations as gx  # noqa: E402  (after the analytics switch above)
from great_expectations.data_context.types.base import (  # noqa: E402
    DataContextConfig,
    InMemoryStoreBackendDefaults,
    ProgressBarsConfig,
)
from great_expectations.exceptions import GreatExpectationsError  # noqa: E402

from schemas.wire import ExpectationOutcome  # noqa: E402
from silos.data import name_list  # noqa: E402
from silos.files import restrict_tree  # noqa: E402

log = logging.getLogger(__name__)

SITE = "fedsilo"
# BASIC carries the unexpected counts and percentages the summary needs. SUMMARY would add
# unexpected-index lists and a pandas query string per expectation: each costs a filtered copy
# of the whole table, and together they doubled the time to validate a million rows.
# Nothing per row: no partial list of unexpected values (partial_unexpected_count 0 and
# exclude_unexpected_values), no unexpected rows, no index query. The data docs render the
# validation result, so what is not in it cannot leak into them.
RESULT_FORMAT = {
    "result_format": "BASIC",
    "partial_unexpected_count": 0,
    "exclude_unexpected_values": True,
    "include_unexpected_rows": False,
    "return_unexpected_index_query": False,
}
DOCS_README = """These pages are Great Expectations' data docs for the last validation of this
silo's table against the federation's data contract, written by the fedsilo silo agent.

Sensitive: they describe this institution's data (column names, dtypes, row counts, the share
of values outside the contract). They hold no cell value or row, but keep them inside the
institution: the folder is readable by its owner only (0700, files 0600); do not publish it.
"""
_REFERENCE_STATS = ("expect_column_mean_to_be_between", "expect_column_stdev_to_be_between")


def validate(
    view: pd.DataFrame, suite: Any, *, silo: str, docs_dir: Path
) -> tuple[tuple[ExpectationOutcome, ...], Path | None]:
    """Validate the validation view with `suite`; returns every outcome and the docs page.

    A validation that GX cannot run at all yields one failed outcome naming the error's
    type; data docs that cannot be written (disk full, no permission) yield None and a
    warning, since the validation itself stands.
    """
    context = _context(docs_dir)
    source = context.data_sources.add_pandas(name=f"silo-{silo}")
    batch = source.add_dataframe_asset(name="table").add_batch_definition_whole_dataframe("all")
    definition = context.validation_definitions.add(
        gx.ValidationDefinition(name="gate", data=batch, suite=context.suites.add(suite))
    )
    try:
        result = definition.run(batch_parameters={"dataframe": view}, result_format=RESULT_FORMAT)
    except (GreatExpectationsError, ValueError, TypeError) as exc:
        log.error("silo %s: GX could not run the suite: %s", silo, type(exc).__name__)
        failure = ExpectationOutcome(
            expectation="run_suite",
            success=False,
            detail=f"Great Expectations could not run the suite ({type(exc).__name__})",
        )
        return (failure,), None
    # GX returns results in its own order; report them in the suite's (the contract's) order.
    rank = {_key(e.configuration): i for i, e in enumerate(suite.expectations)}
    ordered = sorted(result.results, key=lambda r: rank.get(_key(r.expectation_config), 0))
    outcomes = tuple(_outcome(r, view) for r in ordered)
    return outcomes, _write_docs(context, docs_dir, silo)


def combined_detail(kind: str, kwargs: dict, raw: dict, view: Any) -> str:
    """The outcome line for counts combined over partitions (`silos.chunked_gate`)."""
    return _detail(kind, kwargs, raw, view)


def _key(config: Any) -> tuple[str, str | None]:
    return config.type, config.kwargs.get("column")


def _context(docs_dir: Path) -> Any:
    site = {
        "class_name": "SiteBuilder",
        "store_backend": {
            "class_name": "TupleFilesystemStoreBackend",
            "base_directory": str(docs_dir),
        },
        "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
    }
    config = DataContextConfig(
        store_backend_defaults=InMemoryStoreBackendDefaults(init_temp_docs_sites=False),
        analytics_enabled=False,
        progress_bars=ProgressBarsConfig(globally=False),
        data_docs_sites={SITE: site},
    )
    return gx.get_context(mode="ephemeral", project_config=config)


def _write_docs(context: Any, docs_dir: Path, silo: str) -> Path | None:
    try:
        if docs_dir.is_dir():
            shutil.rmtree(docs_dir)  # only the last validation's pages remain
        context.build_data_docs(site_names=[SITE])
        (docs_dir / "README.txt").write_text(DOCS_README)
        restrict_tree(docs_dir)
    except OSError as exc:
        log.warning("silo %s: cannot write data docs to %s: %s", silo, docs_dir, exc.strerror)
        return None
    pages = sorted((docs_dir / "validations").rglob("*.html"))
    return pages[-1] if pages else docs_dir / "index.html"


def _outcome(result: Any, view: pd.DataFrame) -> ExpectationOutcome:
    config = result.expectation_config
    kwargs = config.kwargs
    column = kwargs.get("column")
    raw = result.result or {}
    count = raw.get("unexpected_count")
    percent = raw.get("unexpected_percent")
    absent = [c for c in kwargs.get("column_list") or [column] if c and c not in view.columns]
    if _raised(result.exception_info):
        detail = (
            "could not be evaluated on this column's values (a wrong type?)"
            if not absent
            else "column absent from the table"
            if column is not None
            else f"columns absent from the table: {name_list(absent)}"
        )
    else:
        detail = _detail(config.type, kwargs, raw, view)
    success = bool(result.success)
    if config.type in _REFERENCE_STATS and not absent and view[column].count() < 2:
        # A column the contract lets be wholly missing has no mean or std to compare.
        success, detail = True, "fewer than 2 present values: nothing to compare"
    # A failed expectation of severity "warning" (on_drift = "warn") reports but passes.
    warning = not success and str(getattr(config, "severity", "")) in (
        "warning",
        "FailureSeverity.WARNING",
    )
    return ExpectationOutcome(
        expectation=config.type,
        column=column,
        success=success or warning,
        warning=warning,
        unexpected_count=int(count) if count is not None else None,
        unexpected_percent=float(percent)
        if percent is not None and math.isfinite(percent)
        else None,
        detail=detail,
    )


def _raised(info: Any) -> bool:
    if not info:
        return False
    if "raised_exception" in info:
        return bool(info["raised_exception"])
    return any(isinstance(v, dict) and v.get("raised_exception") for v in info.values())


def _detail(kind: str, kwargs: dict, raw: dict, view: pd.DataFrame) -> str:
    """A human line built from counts, bounds and column names only, never cell values."""
    count, percent = raw.get("unexpected_count"), raw.get("unexpected_percent")
    share = f"{count} ({percent:.2f}%)" if count is not None and percent is not None else "?"
    mostly = kwargs.get("mostly")
    allowed = 100.0 * (1.0 - (1.0 if mostly is None else mostly))
    if kind == "expect_table_columns_to_match_set":
        mismatch = raw.get("details", {}).get("mismatched", {})
        missing, extra = mismatch.get("missing", []), mismatch.get("unexpected", [])
        return f"missing columns: {name_list(missing)}; undeclared columns: {name_list(extra)}"
    if kind == "expect_table_row_count_to_be_between":
        return f"{len(view)} rows; the contract needs at least {kwargs.get('min_value')}"
    if kind == "expect_column_values_to_be_in_type_list":
        return f"dtype {view[kwargs['column']].dtype}; the contract needs an integer or float"
    if kind == "expect_column_values_to_be_between":
        bounds = f"[{kwargs.get('min_value')}, {kwargs.get('max_value')}]"
        return f"{share} of present values outside {bounds}; {allowed:.2f}% allowed"
    if kind == "expect_column_values_to_not_be_null":
        return f"{share} of rows missing (sentinels count); {allowed:.2f}% allowed"
    if kind == "expect_column_values_to_be_in_set":
        n = len(kwargs.get("value_set", []))
        return f"{share} of present values not among the contract's {n} allowed values"
    if kind == "expect_column_values_to_be_unique":
        return f"{share} of present values are shared with another row; the contract says unique"
    if kind in _REFERENCE_STATS:
        stat = "mean" if kind == "expect_column_mean_to_be_between" else "std"
        low, high = _g(kwargs.get("min_value")), _g(kwargs.get("max_value"))
        seen = _g(raw.get("observed_value"))
        return f"{stat} {seen}; the contract's reference allows [{low}, {high}]"
    return ""


def _g(number: Any) -> str:
    """A number for a detail line; "?" where GX gave none (a bound or mean that overflowed)."""
    return f"{number:.4g}" if isinstance(number, int | float) else "?"
