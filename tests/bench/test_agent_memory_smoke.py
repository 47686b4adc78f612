"""bench/agent_memory.py at its smallest: real agent processes idle, through a tree-only run
and through a PyTorch run, with the libraries each one maps read from /proc.

An idle agent and one that served only tree runs must not have loaded torch; one that served
a PyTorch run has (so the check can fail), and holds more memory than it did idle.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

# two federations of four agents: ~4 min idle, 13 min at load 40; `make test-slow` runs it
pytestmark = [pytest.mark.integration, pytest.mark.slow]
HOSPITALS = {"cleveland", "hungary", "va_long_beach", "switzerland"}


@pytest.mark.timeout(1800)  # two federations, two short runs; minutes on a loaded machine
def test_idle_tree_and_torch_agents(
    tmp_path: Path, prefect_api_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from bench import agent_memory

    report = agent_memory.main(
        ["--rounds", "1", "--idle-s", "1", "--prefect-url", prefect_api_url]
        + ["--workspace", str(tmp_path / "ws"), "--json", str(tmp_path / "memory.json")]
    )

    phases = report["phases"]
    assert set(phases) == {"idle (trees)", "trees", "idle (torch)", "torch"}
    for p in phases.values():
        assert set(p["peak_pss_mb"]) == HOSPITALS and all(v > 0 for v in p["peak_pss_mb"].values())
    for name in ("idle (trees)", "idle (torch)"):
        assert all(libs == [] for libs in phases[name]["libs"].values()), phases[name]["libs"]
    assert all(libs == ["xgboost"] for libs in phases["trees"]["libs"].values())
    assert all(libs == ["torch"] for libs in phases["torch"]["libs"].values())
    idle_max = max(phases["idle (torch)"]["peak_pss_mb"].values())
    assert idle_max < min(phases["torch"]["peak_pss_mb"].values())  # torch is not free
    (idle, value, target, met), *_ = report["verdicts"]
    assert idle.startswith("idle agent peak PSS") and target == 250 and met == (value < 250)
    assert (tmp_path / "memory.json").exists()
    assert f"{'MET' if met else 'MISSED':<6} {idle}" in capsys.readouterr().out
