"""The order in which pytest-xdist gets the test files (tests/support/schedule.py)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from support.schedule import SECONDS_PER_FILE, longest_files_first, seconds_by_file

TESTS = Path(__file__).parent


@dataclass
class _Item:
    path: Path
    name: str


def test_every_listed_file_exists() -> None:
    """A renamed or split file must be renamed here too, or it silently loses its place."""
    missing = [rel for rel in SECONDS_PER_FILE if not (TESTS / rel).is_file()]
    assert not missing, f"tests/support/schedule.py lists files that do not exist: {missing}"


def test_longest_files_go_first_and_each_file_keeps_its_order() -> None:
    slow, slower = "integration/test_plugin_mode.py", "integration/test_federation_e2e.py"
    assert SECONDS_PER_FILE[slower] > SECONDS_PER_FILE[slow]
    items = [
        _Item(TESTS / "schemas/test_frames.py", "a"),
        _Item(TESTS / slow, "b1"),
        _Item(TESTS / "silos/test_data.py", "c"),
        _Item(TESTS / slower, "d1"),
        _Item(TESTS / slow, "b2"),
        _Item(TESTS / slower, "d2"),
        _Item(Path("/elsewhere/test_x.py"), "e"),  # outside tests/: counts as short
    ]
    longest_files_first(items, TESTS)
    assert [i.name for i in items] == ["d1", "d2", "b1", "b2", "a", "c", "e"]


def test_seconds_by_file_sums_every_phase_of_a_file_and_sorts_longest_first() -> None:
    phases = [
        ("tests/a/test_x.py::test_one", 1.5),  # setup, call, teardown of one test
        ("tests/a/test_x.py::test_one", 2.0),
        ("tests/b/test_y.py::test_two[sqlite]", 4.0),
        ("tests/a/test_x.py::test_three", 1.0),
        ("tests/c/test_z.py::test_four", 0.25),
    ]
    assert seconds_by_file(phases) == [
        ("a/test_x.py", 4.5),
        ("b/test_y.py", 4.0),
        ("c/test_z.py", 0.25),
    ]
