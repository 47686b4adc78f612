"""The capture guard (tests/support/capture_guard.py) keeps one test's stray close of
sys.stderr from breaking every later test on its worker."""

from __future__ import annotations

import io
import sys

import pytest
from support import capture_guard


@pytest.fixture
def fd_capture(request: pytest.FixtureRequest) -> None:
    if request.config.getoption("capture") != "fd":
        pytest.skip("the guard protects pytest's fd-level capture only")


@pytest.mark.usefixtures("fd_capture")
def test_closing_sys_stderr_is_refused_and_recorded() -> None:
    sys.stderr.close()
    assert not sys.stderr.closed
    print("still captured", file=sys.stderr)
    refusals = capture_guard.take_refusals()
    assert len(refusals) == 1
    assert "test_capture_guard.py" in refusals[0]


@pytest.mark.usefixtures("fd_capture")
def test_a_dropped_wrapper_of_the_buffer_does_not_close_it() -> None:
    wrapper = io.TextIOWrapper(sys.stdout.buffer)
    del wrapper  # a TextIOWrapper closes its buffer when it is garbage-collected
    assert not sys.stdout.buffer.closed
    print("still captured")
    assert len(capture_guard.take_refusals()) == 1
