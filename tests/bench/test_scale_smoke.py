"""bench/scale.py at its smallest (4 silos, 1,000 parameters, 2 secure rounds) so the load
benchmark cannot rot: a real service process on PostgreSQL, real silo workers, exact result."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "scale.py"

pytestmark = [pytest.mark.integration, pytest.mark.postgres]


def _load_scale():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("bench_scale", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_four_silos_two_secure_rounds_aggregate_exactly(
    fresh_pg_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    scale = _load_scale()
    trial = scale.run_trial(
        4, 1_000, 2, fresh_pg_url, tmp_path, workers=2, deadline_s=120, replicas=2
    )

    assert trial.problems == []
    assert len(trial.latency_s) == 2 and trial.forced_closes == 0
    assert trial.contributors_ok
    assert trial.max_error <= trial.error_bound
    assert trial.l2_ratio < 0.1  # a lost or doubled update would make this about 1
    assert trial.exact
    assert all(cpu > 0 for cpu in trial.service_cpu_s) and trial.peak_rss_mb > 0
    assert trial.silo_cpu_s > 0
    scale.report([trial])
    assert "| yes (max err" in capsys.readouterr().out
