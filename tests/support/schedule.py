"""Which test files pytest-xdist should start first, so that two workers finish together.

`scripts/test` hands out whole files (``--dist loadfile``) in collection order
(``--no-loadscope-reorder``; xdist's default reorder puts files with *many* tests first, which
left the slowest few-test files, whole federations, for the end of the run on one worker).
Starting the longest files first and filling in with short ones is the classic
longest-processing-time schedule. The figures are seconds per file (setup, calls, teardown) from
CI runs on an idle 2-core machine; only their order matters, so a rough figure is enough, and
a file not listed counts as short. Re-measure with
``FEDSILO_TEST_WORKERS=0 scripts/test --durations=0`` when a file's cost changes a lot.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol, TypeVar

SECONDS_PER_FILE: dict[str, int] = {
    # the figures of the eight longest files are from a CI run on four workers with forked
    # agents (2026-12-05); the others from earlier runs
    "faults/test_scheduled_coordinator.py": 380,
    "faults/test_round_faults.py": 305,
    "integration/test_federation_e2e.py": 270,
    "integration/test_agent_resilience.py": 310,
    "integration/test_demo_under_load.py": 350,
    "infra/test_backup_restore.py": 200,
    "integration/test_e2e_service_kill_postgres.py": 190,
    "integration/test_trees_e2e.py": 255,
    "integration/test_e2e_bad_data.py": 170,
    "integration/test_e2e_secagg_recovery.py": 170,
    "flows/test_model_registry.py": 150,
    "security/test_schemathesis.py": 175,
    "bench/test_peers_smoke.py": 125,
    "aggregation/test_service_api.py": 120,
    "ha/test_two_services.py": 110,
    "infra/test_compose.py": 100,
    "flows/test_token_not_in_prefect.py": 100,
    "aggregation/test_service_secure_hist.py": 80,
    "integration/test_plugin_mode.py": 70,
    "flows/test_readme_by_hand.py": 65,
    "aggregation/test_service_secagg.py": 60,
    # estimates from the helpers' runs at load 15-40, scaled down: re-measure on an idle machine
    "integration/test_async_rounds_e2e.py": 180,
    "integration/test_tasks_e2e.py": 150,  # ~250 s at load 12 (H1)
    "integration/test_async_secure_e2e.py": 130,  # 145 and 163 s at load 8-17 (H2's runs)
    "integration/test_personalization_e2e.py": 150,
    "integration/test_vertical_e2e.py": 100,
    "integration/test_vertical_agents_e2e.py": 100,  # 107-119 s at load (H5's runs)
    "flows/test_drift_warnings.py": 60,
    "ha/test_wakeup_replicas.py": 60,
    "silos/test_dask_silo.py": 60,
    "silos/test_dask_agent.py": 60,
    "flows/test_lr_schedule.py": 25,  # 16 s of calls at load ~10 (H1's run)
    "integration/test_ensemble_e2e.py": 180,  # 133 s at load ~15 (H8); 330 s at load ~8 (H16)
    "aggregation/engines/test_ensemble_members.py": 20,  # 12.5 s, SQLite and PostgreSQL
    "integration/test_distill_e2e.py": 180,  # 178 s at load ~7, grid of 3 weights (H16)
    "silos/test_distill_step.py": 30,  # 47 s at load ~7 (H16: the weight-grid tests)
}


class Located(Protocol):
    """What the schedule reads of a test item (`pytest.Item` has it)."""

    @property
    def path(self) -> Path: ...


ItemT = TypeVar("ItemT", bound=Located)


def expected_seconds(item: Located, tests_root: Path) -> int:
    """The listed cost of `item`'s file (0 for files not listed)."""
    try:
        rel = item.path.relative_to(tests_root).as_posix()
    except ValueError:  # a test outside tests/ (a path given on the command line)
        return 0
    return SECONDS_PER_FILE.get(rel, 0)


def seconds_by_file(durations: list[tuple[str, float]]) -> list[tuple[str, float]]:
    """Sum (nodeid, seconds) phase durations per test file, longest first: the figures this
    module's table is made of, printed at the end of every run (tests/conftest.py)."""
    totals: dict[str, float] = {}
    for nodeid, seconds in durations:
        path = nodeid.split("::", 1)[0].removeprefix("tests/")
        totals[path] = totals.get(path, 0.0) + seconds
    return sorted(totals.items(), key=lambda kv: (-kv[1], kv[0]))


def longest_files_first(items: list[ItemT], tests_root: Path) -> None:
    """Sort `items` in place, longest file first; the sort is stable, so each file's tests
    stay together and in their order, and unlisted files keep their collection order."""
    items.sort(key=lambda item: -expected_seconds(item, tests_root))
