"""The agent's start reconciles the silo's copy of its lineage and its privacy budget with the
service's ledger (`silos.ledger_sync`), against a real service on 127.0.0.1:

* a copy restored from an older state gets back the entries the silo authored since, and
  `lineage verify --silo-copy` then passes;
* a budget that counts fewer rounds than the ledger's privacy_spent statements is refused,
  naming the file, the run and both counts (a deliberate reset is respected);
* an agent killed after the service stored its update, before the answer came (the review's
  M2): after its restart the copy holds the update's receipt and the round's privacy_spent
  statement is in the ledger once, even though the service moved on to later rounds;
* a resubmission answered "duplicate" without a receipt gets it from the ledger.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from support.live_service import (
    coordinator,
    enrolled_silo,
    service_in_thread,
    started_run,
    write_silo_key,
)
from support.validation import validate

from flows.lineage_cmds import verify_silo_copy
from flows.service_client import CoordinatorClient
from schemas import tensors
from schemas.specs import ModelSpec, PrivacySpec, RunSpec, SecureAggregationSpec, param_shapes
from schemas.wire import RoundOpen
from silos import ledger_sync, privacy, privacy_budget
from silos.client import SiloClient
from silos.client_errors import NotFound
from silos.config import SiloConfig, load_silo_config
from silos.exceptions import PrivacyBudgetError
from silos.lineage_copy import keep_receipt, load_records, records_path

MODEL = ModelSpec(kind="logreg", n_features=3)
DP = PrivacySpec(noise_multiplier=1.0, clip_norm=0.5, delta=1e-5)
SPEC = RunSpec(
    federation="f",
    dataset="toy",
    model=MODEL,
    rounds=4,
    min_silos=1,
    secure_aggregation=SecureAggregationSpec(enabled=False),
)


@dataclass
class Fed:
    coord: CoordinatorClient
    a: SiloClient
    config: SiloConfig
    run_id: str


@pytest.fixture
def fed(tmp_path: Path) -> Iterator[Fed]:
    folder = tmp_path / "a"
    folder.mkdir()
    (folder / "silo.toml").write_text(
        '[silo]\nname = "a"\nfederation = "f"\n[data]\npath = "d.csv"\n'
        'contract = "heart_disease"\n[service]\nurls = ["http://127.0.0.1:1"]\n'
    )
    config = load_silo_config(folder / "silo.toml")
    write_silo_key(config.key_path, "a")  # the key the service enrolled
    with service_in_thread(tmp_path / "svc", f"sqlite:///{tmp_path}/service.db") as url:
        coord = coordinator(url)
        coord.create_federation("f")
        a = enrolled_silo(url, coord, "f", "a")
        yield Fed(coord, a, config, started_run(coord, SPEC))
    ledger_sync.unstated_runs.clear()


def _update(run_id: str, round_: int) -> bytes:
    arrays = {n: np.full(s, 0.1 * round_, np.float32) for n, s in param_shapes(MODEL)}
    return tensors.encode(arrays, {"run_id": run_id, "round": str(round_), "n_examples": "50"})


def _round(fed: Fed, round_: int, *, killed: bool = False) -> None:
    """Silo a's DP round as the agent does it: count the release, send the update, keep its
    receipt, state privacy spent. `killed`: the agent dies once the service stored the update,
    before its answer came; the service closes the round and opens the next."""
    keep_receipt(fed.config.workspace, validate(fed.a, fed.run_id, round_))
    payload = _update(fed.run_id, round_)
    privacy.record_round(fed.config, fed.run_id, DP, privacy.release_id(round_, payload))
    answer = fed.a.submit_update(fed.run_id, round_, payload)
    if not killed:
        keep_receipt(fed.config.workspace, answer)
        statement = ledger_sync.privacy_payload(fed.config, "a", fed.run_id, round_, DP)
        keep_receipt(
            fed.config.workspace, fed.a.submit_statement(fed.run_id, "privacy_spent", statement)
        )
    fed.coord.close_round(fed.run_id, round_, RoundOpen(round=round_ + 1, deadline_s=600))


def _privacy_rounds(fed: Fed) -> list[int]:
    entries = fed.coord.ledger(fed.run_id)
    return [
        json.loads(e.payload)["round"]
        for e in entries
        if e.author == "silo:a" and e.kind == "privacy_spent"
    ]


def _copy_verifies(fed: Fed) -> tuple[bool, str]:
    ok, shown = verify_silo_copy(
        records_path(fed.config.workspace), fed.coord.ledger(), fed.coord.ledger_keys()
    )
    return ok, str(shown)


def test_a_copy_restored_from_an_older_state_gets_back_what_it_lacks(
    fed: Fed, caplog: pytest.LogCaptureFixture
) -> None:
    _round(fed, 1)
    backup = fed.config.workspace.parent / "records.backup"
    shutil.copy2(records_path(fed.config.workspace), backup)
    _round(fed, 2)
    _round(fed, 3)
    shutil.copy2(backup, records_path(fed.config.workspace))  # the operator restores a backup
    assert not _copy_verifies(fed)[0]  # what the reviewer saw: verify fails

    with caplog.at_level(logging.WARNING, "fedsilo.silo.ledger_sync"):
        ledger_sync.reconcile(fed.a, fed.config)

    assert "lacked 6 entries" in caplog.text and "restored from an older state" in caplog.text
    ok, shown = _copy_verifies(fed)
    assert ok, shown
    assert len(load_records(fed.config.workspace)) == 9
    ledger_sync.reconcile(fed.a, fed.config)  # nothing left to add: nothing added twice
    assert len(load_records(fed.config.workspace)) == 9


def test_a_budget_behind_the_ledger_is_refused_naming_the_file_run_and_counts(fed: Fed) -> None:
    _round(fed, 1)
    budget = privacy_budget.budget_path(fed.config.workspace)
    backup = budget.with_name("spent.backup")
    shutil.copy2(budget, backup)
    _round(fed, 2)
    _round(fed, 3)
    shutil.copy2(backup, budget)  # an old backup of the budget, signed with the same key
    privacy_budget.check(fed.config)  # its signature verifies: only the ledger tells

    with pytest.raises(PrivacyBudgetError) as caught:
        ledger_sync.reconcile(fed.a, fed.config)

    message = str(caught.value)
    assert str(budget) in message and fed.run_id in message
    assert "counts 1 noised rounds" in message and "for 3 of its rounds" in message
    assert "reset-privacy-budget" in message and "restore the newer budget" in message
    # reset on purpose: the statements before the reset no longer count against it
    privacy_budget.reset(fed.config, "restored host", discard_valid=True)
    ledger_sync.reconcile(fed.a, fed.config)


def test_an_agent_killed_after_the_service_stored_its_update_states_the_round_once(
    fed: Fed,
) -> None:
    _round(fed, 1)
    _round(fed, 2, killed=True)  # the service stored it and moved on to round 3
    assert _privacy_rounds(fed) == [1]
    assert not _copy_verifies(fed)[0]  # "claims author silo:a but the silo's copy has no..."

    ledger_sync.reconcile(fed.a, fed.config)  # the restarted agent's start

    assert _privacy_rounds(fed) == [1, 2]
    ok, shown = _copy_verifies(fed)
    assert ok, shown
    ledger_sync.reconcile(fed.a, fed.config)  # a second restart sends nothing again
    assert _privacy_rounds(fed) == [1, 2]
    assert int(privacy.spent_rounds(fed.config)[fed.run_id]["rounds"]) == 2  # counted once


def test_a_first_rounds_missing_statement_is_sent_from_the_budgets_dp_parameters(
    fed: Fed,
) -> None:
    """Killed in the run's first round: no earlier statement tells the run's delta and clip
    norm, but the budget kept them with the round, so the start sends the statement."""
    _round(fed, 1, killed=True)
    assert _privacy_rounds(fed) == []
    entry = privacy.spent_rounds(fed.config)[fed.run_id]
    assert (entry["delta"], entry["clip_norm"]) == (DP.delta, DP.clip_norm)

    ledger_sync.reconcile(fed.a, fed.config)

    assert _privacy_rounds(fed) == [1] and not ledger_sync.unstated_runs
    assert _copy_verifies(fed)[0]


def test_a_duplicate_answer_without_receipt_gets_it_from_the_ledger(fed: Fed) -> None:
    keep_receipt(fed.config.workspace, validate(fed.a, fed.run_id, 1))
    payload = _update(fed.run_id, 1)
    fed.a.submit_update(fed.run_id, 1, payload)  # its answer was lost
    again: dict[str, Any] = fed.a.submit_update(fed.run_id, 1, payload)
    assert again["duplicate"] and again["receipt"] is None

    ledger_sync.keep_answer(fed.a, fed.config.workspace, fed.run_id, again)

    kinds = [r.statement.kind for r in load_records(fed.config.workspace)]
    assert kinds == ["validation_result", "update_accepted"]
    assert _copy_verifies(fed)[0]


def test_a_service_without_the_route_does_not_stop_the_agent(
    fed: Fed, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def older(**_: object) -> None:
        raise NotFound(404, "Not Found", "GET", "/v1/silo/ledger/records")

    monkeypatch.setattr(fed.a, "own_records", older)
    with caplog.at_level(logging.WARNING, "fedsilo.silo.ledger_sync"):
        ledger_sync.reconcile(fed.a, fed.config)
    assert "reconciliation" in caplog.text and "skipped" in caplog.text
