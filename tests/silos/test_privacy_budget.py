"""The privacy budget file is signed with the silo's key: a hand edit, a deletion or an
unsigned replacement stops training with an error naming the file and the way out; an older
unsigned file is signed on first load; a reset is explicit and recorded."""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from flows.cli import app
from schemas.specs import ModelSpec, PrivacySpec, RunSpec
from schemas.tasks import SecAggInfo, SecAggMaskedTask
from silos import agent, privacy, privacy_budget
from silos.config import SiloConfig, load_silo_config
from silos.exceptions import PrivacyBudgetError, SiloConfigError
from silos.handlers.training import privacy_refusal
from silos.keys import load_or_create_key
from silos.lineage_copy import keep_receipt

SPEC = PrivacySpec(noise_multiplier=1.0, clip_norm=0.5, delta=1e-5)


@pytest.fixture
def config(tmp_path: Path) -> SiloConfig:
    path = tmp_path / "silo.toml"
    path.write_text(
        '[silo]\nname = "a"\nfederation = "f"\n[data]\npath = "d.csv"\ncontract = "heart_disease"\n'
        '[service]\nurls = ["http://127.0.0.1:1"]\n[policy]\nmax_epsilon = 8.0\n'
    )
    return load_silo_config(path)


def _task(round_: int) -> SecAggMaskedTask:
    spec = RunSpec(
        federation="f",
        dataset="heart_disease",
        model=ModelSpec(kind="logreg", n_features=3),
        privacy=SPEC,
    )
    info = SecAggInfo(
        stage="masked", roster=["a", "b"], roster_keys={}, threshold=2, dim=4, bits=32, clip=0.5
    )
    return SecAggMaskedTask(run_id="r1", round=round_, spec=spec, secagg=info)


def _spent_file(config: SiloConfig) -> Path:
    return config.workspace / "privacy" / "spent.json"


def test_a_hand_edit_lowering_the_count_stops_training(config: SiloConfig) -> None:
    privacy.record_round(config, "r1", SPEC, "1:m")
    privacy.record_round(config, "r1", SPEC, "2:m")
    assert privacy_refusal(config, _task(3)) is not None  # epsilon 9.0 > 8: refused
    path = _spent_file(config)
    doc = json.loads(path.read_text())
    doc["state"]["runs"]["r1"]["rounds"] = 0  # "I never spent anything"
    path.write_text(json.dumps(doc))
    with pytest.raises(PrivacyBudgetError) as caught:
        privacy_refusal(config, _task(3))
    message = str(caught.value)
    assert str(path) in message and "signature" in message
    assert "restore" in message and "fedsilo silo reset-privacy-budget" in message
    umask = os.umask(0o022)
    try:
        with pytest.raises(PrivacyBudgetError):
            agent.run_agent(str(config.source), max_runs=0)  # the agent refuses to start
    finally:
        os.umask(umask)  # run_agent set 077 for this process


def test_deleting_or_replacing_the_signed_file_is_detected(config: SiloConfig) -> None:
    privacy.record_round(config, "r1", SPEC, "1:m")
    path = _spent_file(config)
    path.write_text(json.dumps({"r1": {"sigma": 1.0, "rounds": 0}}))  # old unsigned format
    with pytest.raises(PrivacyBudgetError, match="not signed"):
        privacy.spent_rounds(config)
    path.unlink()
    with pytest.raises(PrivacyBudgetError, match="missing"):
        privacy.spent_rounds(config)


def test_deleting_the_whole_privacy_folder_is_detected_from_the_lineage_copy(
    config: SiloConfig,
) -> None:
    """`rm -rf privacy/` takes the "signed before" marker with the budget: the silo's copy
    of its lineage still holds the privacy_spent statement it sent, so the budget is not
    silently started from zero; an explicit reset is still possible."""
    privacy.record_round(config, "r1", SPEC, "1:m")
    statement = {"run_id": "r1", "kind": "privacy_spent", "payload": "{}", "author": "a"}
    receipt = {"seq": 1, "entry_hash": "h1", "prev_hash": "h0"}
    receipt |= {"created_at": "2026-12-07T00:00:00Z", "signature": "s"}
    answer = {"statement": statement, "author_signature": "s", "receipt": receipt}
    assert keep_receipt(config.workspace, answer) is not None
    shutil.rmtree(config.workspace / "privacy")
    with pytest.raises(PrivacyBudgetError) as caught:
        privacy.spent_rounds(config)
    assert "lineage" in str(caught.value) and "1 privacy_spent statements" in str(caught.value)
    privacy_budget.reset(config, "restored host, no backup")
    assert privacy.spent_rounds(config) == {}


def test_an_older_unsigned_file_is_signed_on_first_load(
    config: SiloConfig, caplog: pytest.LogCaptureFixture
) -> None:
    path = _spent_file(config)
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"r0": {"sigma": 1.0, "rounds": 3}}))
    with caplog.at_level(logging.WARNING, logger="fedsilo.silo.privacy"):
        assert privacy.spent_rounds(config) == {"r0": {"sigma": 1.0, "rounds": 3}}
    assert "now signed" in caplog.text and str(path) in caplog.text
    doc = json.loads(path.read_text())
    assert doc["format"] == privacy_budget.FORMAT and doc["signature"]
    assert oct(path.stat().st_mode & 0o777) == oct(0o600)
    privacy.record_round(config, "r0", SPEC, "4:m")
    assert privacy.spent_rounds(config)["r0"]["rounds"] == 4


def test_a_reset_is_explicit_recorded_and_keeps_the_rejected_file(config: SiloConfig) -> None:
    privacy.record_round(config, "r1", SPEC, "1:m")
    path = _spent_file(config)
    path.write_text(path.read_text().replace('"rounds": 1', '"rounds": 0'))
    with pytest.raises(PrivacyBudgetError):
        privacy_budget.check(config)
    with pytest.raises(ValueError, match="reason"):
        privacy_budget.reset(config, " ")
    code = privacy_budget.main(
        ["reset", "--config", str(config.source), "--reason", "no backup after disk loss"]
    )
    assert code == 0
    state = privacy_budget.load(config)
    assert state["runs"] == {}
    (record,) = state["resets"]
    assert record["reason"] == "no backup after disk loss"
    assert (path.parent / record["rejected"]).is_file()
    assert privacy_refusal(config, _task(1)) is None  # training may go on


def test_a_budget_that_verifies_is_not_reset_by_accident(config: SiloConfig) -> None:
    privacy.record_round(config, "r1", SPEC, "1:m")
    privacy.record_round(config, "r1", SPEC, "2:m")
    path = _spent_file(config)
    with pytest.raises(PrivacyBudgetError) as caught:
        privacy_budget.reset(config, "just looking")
    message = str(caught.value)
    assert str(path) in message and "verifies" in message and "2 noised rounds" in message
    assert "--discard-valid-budget" in message
    args = ["silo", "reset-privacy-budget", "--config", str(config.source), "--reason", "x"]
    refused = CliRunner().invoke(app, args)
    assert refused.exit_code == 2 and "--discard-valid-budget" in refused.output
    assert privacy.spent_rounds(config)["r1"]["rounds"] == 2  # nothing lost
    assert list(path.parent.glob("spent.json.rejected-*")) == []
    done = CliRunner().invoke(app, [*args, "--discard-valid-budget"])
    assert done.exit_code == 0, done.output
    (record,) = privacy_budget.load(config)["resets"]
    assert record["discarded_valid_budget"] is True and (path.parent / record["rejected"]).is_file()


def test_two_resets_in_the_same_second_keep_both_files(
    config: SiloConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(privacy_budget, "_now", lambda: "2026-01-01T00:00:00Z")
    path, kept = _spent_file(config), []
    for rounds, reason in ((1, "one"), (2, "two")):
        for i in range(rounds):
            privacy.record_round(config, "r1", SPEC, f"{i + 1}:m")
        path.write_text(path.read_text().replace(f'"rounds": {rounds}', '"rounds": 0'))  # edited
        kept.append(privacy_budget.reset(config, reason))
    first, second = kept
    assert first is not None and second is not None and first != second
    assert json.loads(first.read_text())["state"]["runs"]["r1"]["rounds"] == 0  # not overwritten
    assert json.loads(second.read_text())["state"]["runs"]["r1"]["rounds"] == 0
    assert len(list(path.parent.glob("spent.json.rejected-*"))) == 2


def test_a_lost_key_is_not_recreated_for_a_workspace_that_worked(config: SiloConfig) -> None:
    """Creating a fresh key would make the budget fail its signature and invite a reset that
    forgets the rounds spent: the silo asks for the key back instead, and writes none."""
    privacy.record_round(config, "r1", SPEC, "1:m")
    config.key_path.unlink()
    with pytest.raises(SiloConfigError, match="identity key .* is missing") as caught:
        privacy.spent_rounds(config)
    assert "restore the key file" in str(caught.value) and "privacy/signed" in str(caught.value)
    with pytest.raises(SiloConfigError, match="is missing"):
        privacy_budget.reset(config, "budget error after host move")
    assert not config.key_path.exists()


def test_a_budget_signed_under_the_silos_previous_key_is_named_and_kept(
    config: SiloConfig,
) -> None:
    """Another key in the key file (a host move without the key): the budget still verifies
    under the key it names, so the error says the key changed, and a reset needs
    --discard-valid-budget, as for any valid budget."""
    privacy.record_round(config, "r1", SPEC, "1:m")
    privacy.record_round(config, "r1", SPEC, "2:m")
    config.key_path.unlink()
    load_or_create_key(config.key_path)  # what a new host would make
    with pytest.raises(PrivacyBudgetError, match="identity key changed"):
        privacy.spent_rounds(config)
    with pytest.raises(PrivacyBudgetError, match="2 noised rounds"):
        privacy_budget.reset(config, "budget error after host move")
    privacy_budget.reset(config, "key lost for good", discard_valid=True)
    state = privacy_budget.load(config)
    assert state["runs"] == {} and state["resets"][0]["discarded_valid_budget"] is True
