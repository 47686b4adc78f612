"""The validation gate as the first step of every round at a silo.

Each round the silo re-reads its table and fingerprints it (sha256 of the canonical table and
of the contract). When the fingerprint is the one already validated, the stored result is
reused: the same rows checked against the same suite give the same answer, and Great
Expectations costs about a second per call. Otherwise the GX suite runs again and the HTML
data docs are rewritten. Either way the round's fingerprint and summary are signed and sent to
the service (ledger entry `validation_result`); a failing silo sits out the round with the
failed expectations as its reason.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from schemas.contracts.loader import load_contract
from schemas.wire import ValidationSummary
from silos.config import SiloConfig
from silos.data import load_table
from silos.exceptions import DataError
from silos.gate import contract_sha256, fingerprint_table, run_gate, summary_for_load_error


@dataclass(frozen=True)
class RoundGate:
    summary: ValidationSummary
    data_docs: Path | None
    reused: bool


def _cache_path(workspace: Path) -> Path:
    return workspace / "validation" / "last.json"


def check_round(config: SiloConfig) -> RoundGate:
    """Fingerprint and (re)validate the silo's table for this round; never raises on bad data."""
    contract = load_contract(config.data.contract)
    try:
        table = load_table(config.data.path)
    except DataError as exc:
        return RoundGate(summary_for_load_error(exc, contract), None, reused=False)
    data_sha, contract_sha = fingerprint_table(table), contract_sha256(contract)
    cache = _cache_path(config.workspace)
    if cache.exists():
        cached = json.loads(cache.read_text())
        if cached["data_sha256"] == data_sha and cached["contract_sha256"] == contract_sha:
            docs = Path(cached["data_docs"]) if cached.get("data_docs") else None
            return RoundGate(ValidationSummary.model_validate(cached["summary"]), docs, True)
    result = run_gate(table, contract, silo=config.silo.name, workspace=config.workspace)
    cache.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    cache.write_text(
        json.dumps(
            {
                "data_sha256": data_sha,
                "contract_sha256": contract_sha,
                "summary": result.summary.model_dump(mode="json"),
                "data_docs": str(result.data_docs) if result.data_docs else None,
            }
        )
    )
    return RoundGate(result.summary, result.data_docs, reused=False)


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
    }
