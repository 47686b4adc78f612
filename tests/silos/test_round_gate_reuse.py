"""The round gate hashes the table file's bytes every round and parses it again only when they
changed (`silos.round_gate._fingerprint`): the same bytes give the fingerprint they gave, and
any other bytes are parsed and fingerprinted afresh, whatever the file's size and mtime say."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from test_test_path import rows, silo_toml

from silos import contract_store, round_gate
from silos.config import SiloConfig
from silos.data import load_table
from silos.gate import fingerprint_table


@pytest.fixture
def config(tmp_path: Path) -> SiloConfig:
    rows(120, 0).to_csv(tmp_path / "train.csv", index=False)
    return silo_toml(tmp_path, None)


@pytest.fixture
def parses(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """The tables the gate parses from now on."""
    seen: list[Path] = []
    load = round_gate.load_table

    def counted(path: Path):  # type: ignore[no-untyped-def]
        seen.append(path)
        return load(path)

    monkeypatch.setattr(round_gate, "load_table", counted)
    return seen


def test_unchanged_bytes_are_not_parsed_again(config: SiloConfig, parses: list[Path]) -> None:
    first = round_gate.check_round(config).summary
    second = round_gate.check_round(config).summary
    assert first.success and second == first
    assert parses == [config.data.path]
    assert first.data_sha256 == fingerprint_table(load_table(config.data.path))


def test_changed_bytes_are_parsed_whatever_the_stat_says(
    config: SiloConfig, parses: list[Path]
) -> None:
    path = config.data.path
    first = round_gate.check_round(config).summary
    original = path.read_bytes()
    stat = path.stat()
    # one digit changed in place: the same size, and the mtime put back
    changed = original.replace(b"1", b"2", 1)
    assert changed != original and len(changed) == len(original)
    path.write_bytes(changed)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    second = round_gate.check_round(config).summary
    assert second.data_sha256 != first.data_sha256
    assert second.data_sha256 == fingerprint_table(load_table(path))
    path.write_bytes(original)  # back to the first bytes: their own fingerprint again
    assert round_gate.check_round(config).summary.data_sha256 == first.data_sha256
    assert parses == [path, path, path]


def test_the_contract_is_parsed_once_while_its_text_stays(
    config: SiloConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    texts: list[str] = []
    load = contract_store.load_contract_text

    def counted(text: str, source: str):  # type: ignore[no-untyped-def]
        texts.append(text)
        return load(text, source)

    monkeypatch.setattr(contract_store, "load_contract_text", counted)
    contract_store._parsed.cache_clear()
    first = contract_store.contract_for(config)
    assert contract_store.contract_for(config) is first
    assert len(texts) == 1


def test_a_verdict_is_filed_under_the_rows_validated(
    config: SiloConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The file changed between its fingerprint and its validation (the stale fingerprint
    below): the verdict is filed under what the gate validated, never the stale bytes."""
    stale = "0" * 64
    monkeypatch.setattr(round_gate, "_fingerprint", lambda _path: (stale, None))
    summary = round_gate.check_round(config).summary
    validated = fingerprint_table(load_table(config.data.path))
    assert summary.data_sha256 == validated
    filed = json.loads((config.workspace / "validation" / "last.json").read_text())
    assert filed["data_sha256"] == validated != stale
