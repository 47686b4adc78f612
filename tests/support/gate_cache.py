"""Silo workspaces that start with the validation gate's verdict already stored, as an agent's
own workspace holds it after its first check of an unchanged table.

Every end-to-end test starts fresh agents, and each one's first gate run imports and runs
Great Expectations: 6-7 s of CPU, about a quarter of the suite's, for the same answer on the
same UCI tables every time. The verdict is computed here once per test process by the real
gate (`silos.gate.run_gate`) and written where the agent looks (`silos.round_gate.store_verdict`),
keyed by the table's and the contract's fingerprints: a test that changes a silo's table or
contract gets a fresh validation by GX, as a silo would. The gate itself is tested in
tests/silos and by the tests that change tables (tests/integration/test_e2e_bad_data.py).
"""

from __future__ import annotations

import functools
import tempfile
from pathlib import Path

from schemas.contracts.loader import load_contract
from schemas.wire import ValidationSummary
from silos.config import load_silo_config
from silos.data import load_table
from silos.gate import contract_sha256, fingerprint_table, run_gate
from silos.round_gate import store_verdict


@functools.cache
def _verdict(silo: str, contract: str, data_sha: str, data_path: Path) -> ValidationSummary:
    del data_sha  # part of the key only: the same table checked again gives the same answer
    with tempfile.TemporaryDirectory() as workspace:
        result = run_gate(
            load_table(data_path), load_contract(contract), silo=silo, workspace=Path(workspace)
        )
    return result.summary


def seed_verdicts(configs: dict[str, Path]) -> None:
    """Store each silo's gate verdict in its workspace (the silo.toml at `configs[name]`)."""
    for path in configs.values():
        config = load_silo_config(str(path))
        table = load_table(config.data.path)
        data_sha = fingerprint_table(table)
        contract = load_contract(config.data.contract)
        summary = _verdict(config.silo.name, config.data.contract, data_sha, config.data.path)
        store_verdict(config.workspace, data_sha, contract_sha256(contract), summary)
