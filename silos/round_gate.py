"""The validation gate as the first step of every round at a silo.

Each round the silo re-reads its table and fingerprints it (sha256 of the canonical table and of
the contract). The file's bytes are hashed every round; when they are the ones last parsed,
their canonical fingerprint is reused without parsing them again (`_fingerprint`). When the
fingerprint is the one already validated, the stored result is reused: the same rows checked
against the same suite give the same answer, and Great Expectations costs about a second per
call. Otherwise the GX suite runs again and the HTML data docs are rewritten. Either way the
round's fingerprint and summary are signed and sent to the service (ledger entry
`validation_result`); a failing silo sits out the round with the failed expectations as its
reason.

A training table that goes to Dask (`silos.compute.uses_dask`) is fingerprinted on the workers
and, when it changed, validated partition by partition (`silos.chunked_gate`): same verdict,
no data docs. A held-out test file is always checked here with pandas: its rows are scored in
the agent's process, so they must fit in it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from schemas.wire import ExpectationOutcome, ValidationSummary
from silos.compute import read_partitions, shared_client, uses_dask
from silos.config import SiloConfig
from silos.contract_store import contract_for
from silos.data import load_table, partition_read_error
from silos.exceptions import DataError
from silos.gate import (
    GateResult,
    contract_sha256,
    fingerprint_table,
    run_gate,
    summary_for_load_error,
)

if TYPE_CHECKING:
    import pandas as pd


# The one expectation a held-out test file need not meet (`held_out_failures`).
TEST_FILE_EXEMPT = "expect_table_row_count_to_be_between"


@dataclass(frozen=True)
class RoundGate:
    summary: ValidationSummary
    data_docs: Path | None
    reused: bool


def _cache_path(workspace: Path) -> Path:
    return workspace / "validation" / "last.json"


def check_round(config: SiloConfig) -> RoundGate:
    """Fingerprint and (re)validate the silo's table for this round; never raises on bad data.

    A held-out test file (`[data] test_path`) goes through the same gate; its fingerprint and
    row count join the summary, and its failures are named ``test_path:<expectation>``.
    """
    gate = _check_table(config, config.data.path, config.workspace, on_dask=True)
    if config.data.test_path is None:
        return gate
    test = _check_table(config, config.data.test_path, config.workspace / "test_path")
    failed = [
        f.model_copy(update={"expectation": f"test_path:{f.expectation}"})
        for f in held_out_failures(test.summary)
    ]
    summary = gate.summary.model_copy(
        update={
            "test_data_sha256": test.summary.data_sha256,
            "test_n_rows": test.summary.n_rows,
            "n_expectations": gate.summary.n_expectations + test.summary.n_expectations,
            "success": gate.summary.success and not failed,
            "failed": [*gate.summary.failed, *failed],
        }
    )
    return RoundGate(summary, gate.data_docs, gate.reused and test.reused)


def held_out_failures(summary: ValidationSummary) -> list[ExpectationOutcome]:
    """The held-out test file's failures that count (here and in `fedsilo silo check`): the
    contract's min_rows is about the training table; a test file may be smaller."""
    return [f for f in summary.failed if f.expectation != TEST_FILE_EXEMPT]


def _check_table(
    config: SiloConfig, path: Path, workspace: Path, *, on_dask: bool = False
) -> RoundGate:
    contract = contract_for(config)
    try:
        if on_dask and uses_dask(config.compute, path):
            data_sha, run = _on_dask(config, path, workspace)
        else:
            data_sha, parsed = _fingerprint(path)

            def run() -> GateResult:
                table = parsed if parsed is not None else load_table(path)
                return run_gate(table, contract, silo=config.silo.name, workspace=workspace)
    except DataError as exc:
        return RoundGate(summary_for_load_error(exc, contract), None, reused=False)
    contract_sha = contract_sha256(contract)
    cache = _cache_path(workspace)
    if cache.exists():
        cached = json.loads(cache.read_text())
        if cached["data_sha256"] == data_sha and cached["contract_sha256"] == contract_sha:
            docs = Path(cached["data_docs"]) if cached.get("data_docs") else None
            return RoundGate(ValidationSummary.model_validate(cached["summary"]), docs, True)
    result = run()
    # keyed by the fingerprint of the rows the gate validated (it computes its own): a file
    # that changed since `data_sha` was taken never files its verdict under the old bytes
    validated_sha = result.summary.data_sha256 or data_sha
    store_verdict(workspace, validated_sha, contract_sha, result.summary, result.data_docs)
    return RoundGate(result.summary, result.data_docs, reused=False)


# path -> (sha256 of the file's bytes, canonical fingerprint of the table they parse to).
# Parsing and canonical hashing were most of a silo's CPU in a round whose table had not changed
# (bench/README.md, "Issue 20: fewer hops, batched task-run events, ..."); hashing the bytes
# costs a small fraction of that.
_PARSED: dict[Path, tuple[str, str]] = {}


def _fingerprint(path: Path) -> tuple[str, pd.DataFrame | None]:
    """The table's canonical fingerprint, and the table when it had to be parsed for it.

    Identical bytes parse to the identical table, so bytes equal to the ones last parsed give
    the fingerprint computed then. The bytes are hashed before and after parsing; a file that
    changed meanwhile is not remembered (its next check parses it again)."""
    before = _file_sha256(path)
    known = _PARSED.get(path)
    if before is not None and known is not None and known[0] == before:
        return known[1], None
    table = load_table(path)  # DataError: named, as before
    data_sha = fingerprint_table(table)
    if before is not None and _file_sha256(path) == before:
        _PARSED[path] = (before, data_sha)
    return data_sha, table


def _file_sha256(path: Path) -> str | None:
    """sha256 of the file's bytes; None when it cannot be read (`load_table` says why)."""
    try:
        with path.open("rb") as f:
            return hashlib.file_digest(f, "sha256").hexdigest()
    except OSError:
        return None


def store_verdict(
    workspace: Path,
    data_sha: str,
    contract_sha: str,
    summary: ValidationSummary,
    data_docs: Path | None = None,
) -> None:
    """Remember the gate's answer for this table and contract: the next check of the same
    fingerprints reuses it without running (or importing) Great Expectations."""
    cache = _cache_path(workspace)
    cache.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    cache.write_text(
        json.dumps(
            {
                "data_sha256": data_sha,
                "contract_sha256": contract_sha,
                "summary": summary.model_dump(mode="json"),
                "data_docs": str(data_docs) if data_docs else None,
            }
        )
    )


def _on_dask(
    config: SiloConfig, path: Path, workspace: Path
) -> tuple[str, Callable[[], GateResult]]:
    """The table's fingerprint, computed on the silo's cluster, and its chunked gate."""
    from silos.chunked_gate import chunked_fingerprint, partitions, run_chunked_gate

    client = shared_client(config.compute)
    table = read_partitions(path, None, config.compute.partition_bytes)
    try:
        data_sha = chunked_fingerprint(client, table)
    except (OSError, ValueError) as exc:  # raised on a worker, re-raised here
        raise partition_read_error(path, exc) from exc

    def run() -> GateResult:
        chunks = partitions(client, table)
        contract = contract_for(config)
        return run_chunked_gate(chunks, contract, silo=config.silo.name, workspace=workspace)

    return data_sha, run


def statement_payload(silo: str, round_: int, summary: ValidationSummary) -> dict[str, object]:
    """The signed ledger payload: fingerprints and counts, never values or rows."""
    return {
        "silo": silo,
        "round": round_,
        "contract": summary.contract,
        "contract_version": summary.contract_version,
        "contract_sha256": summary.contract_sha256,
        "data_sha256": summary.data_sha256,
        "n_rows": summary.n_rows,
        **({"test_data_sha256": summary.test_data_sha256} if summary.test_data_sha256 else {}),
        **({"test_n_rows": summary.test_n_rows} if summary.test_n_rows is not None else {}),
        "success": summary.success,
        "failed": [
            {
                "expectation": f.expectation,
                "column": f.column,
                "unexpected_count": f.unexpected_count,
                "unexpected_percent": f.unexpected_percent,
            }
            for f in summary.failed
        ],
        # on_drift = "warn" checks that failed: names only (the detail carries this silo's
        # column statistics, which stay with the silo's operator)
        **(
            {
                "warnings": [
                    {"expectation": w.expectation, "column": w.column} for w in summary.warnings
                ]
            }
            if summary.warnings
            else {}
        ),
    }
