"""The one-line reason of a failed validation gate (`ValidationSummary.reason`): it goes into
the round's decline and the agent's log, so a table that could not be read names its file;
other failures name the check and its counts only (their detail holds the silo's column
statistics, which stay at the silo)."""

from __future__ import annotations

from pathlib import Path

from support.scripted_silo import silo_config

from schemas.wire import REASON_DETAIL_CHARS, ExpectationOutcome, ValidationSummary
from silos.config import load_silo_config
from silos.round_gate import check_round


def _summary(*failed: ExpectationOutcome) -> ValidationSummary:
    return ValidationSummary(
        contract="heart_disease",
        contract_version="1.0.0",
        contract_sha256="0" * 64,
        data_sha256="",
        n_rows=0,
        n_expectations=1,
        success=False,
        failed=list(failed),
    )


def test_a_missing_data_file_is_named_in_the_gates_reason(tmp_path: Path) -> None:
    config = load_silo_config(silo_config(tmp_path))  # its data file d.csv was never written
    summary = check_round(config).summary
    assert not summary.success
    reason = summary.reason()
    named = f"contract heart_disease v1.0.0 failed: read_table(table): {tmp_path / 'd.csv'}: "
    assert reason.startswith(named), reason
    assert "no such file" in reason.lower(), reason  # and the reader's reason


def test_only_an_unreadable_tables_detail_is_kept_and_it_is_clipped() -> None:
    mean = ExpectationOutcome(
        expectation="expect_column_mean_to_be_between",
        column="age",
        success=False,
        detail="mean 71.2; the contract's reference allows [40, 60]",
    )
    assert _summary(mean).reason() == (
        "contract heart_disease v1.0.0 failed: expect_column_mean_to_be_between(age)"
    )
    held_out = ExpectationOutcome(  # the [data] test_path file (silos/round_gate.py)
        expectation="test_path:read_table", success=False, detail="/data/test.csv: no such file"
    )
    assert _summary(held_out, mean).reason() == (
        "contract heart_disease v1.0.0 failed: test_path:read_table(table): /data/test.csv: no "
        "such file; expect_column_mean_to_be_between(age)"
    )
    long_path = "/data/" + "x" * 600 + ".csv: no such file"
    unreadable = ExpectationOutcome(expectation="read_table", success=False, detail=long_path)
    reason = _summary(unreadable).reason()
    detail = reason.split("read_table(table): ", 1)[1]
    assert len(detail) == REASON_DETAIL_CHARS and detail.endswith("…")
    assert detail.startswith("/data/xxx")
