"""Keep pytest's output capture alive when code under test closes ``sys.stdout``/``sys.stderr``.

While pytest captures at the file-descriptor level, ``sys.stderr`` *is* the capture's temporary
file. Once, on one xdist worker, something closed it mid-test (CI of e8539bc); every later
capture suspend/resume on that worker then raised "I/O operation on closed file", and 1,800
tests errored instead of one. The closer did not show up in serial runs of the same files.

This plugin swaps each global capture file for one whose ``close()`` only pytest itself may
perform (when it stops capturing); any other close is refused and its stack is kept. After the
test in which it happened, the stack is written to the terminal summary as a warning naming the
test, so the culprit is visible and one test's mistake stays one test's problem.
"""

from __future__ import annotations

import io
import os
import sys
import traceback
import warnings

import pytest

_PLUGIN_NAME = "fedsilo-capture-guard"
_GUARDS: list[_Guard] = []


class CaptureClosedWarning(UserWarning):
    """Code under test tried to close pytest's capture of stdout or stderr."""


class _Guard:
    def __init__(self) -> None:
        self.allow_close = False
        self.attempts: list[str] = []  # stacks of refused closes, not yet reported
        self.keep: list[object] = []  # the replaced capture files (never garbage-collected)

    def refuse(self, what: str) -> None:
        self.attempts.append(f"{what}.close() from:\n" + "".join(traceback.format_stack()[-14:-2]))


class _GuardedFileIO(io.FileIO):
    guard: _Guard

    def close(self) -> None:
        if self.guard.allow_close or self.closed:
            super().close()
        else:
            self.guard.refuse("the capture file's buffer")


class _GuardedText(io.TextIOWrapper):
    guard: _Guard

    def close(self) -> None:
        if self.guard.allow_close or self.closed:
            super().close()
        else:
            self.guard.refuse("sys.stdout/sys.stderr (pytest's capture file)")


def install(config: pytest.Config) -> None:
    """Swap the global fd-capture files for guarded ones (call from ``pytest_configure``)."""
    capman = config.pluginmanager.getplugin("capturemanager")
    capturing = getattr(capman, "_global_capturing", None)
    if capturing is None:
        return  # -s / --capture=no: nothing to protect
    guard = _Guard()
    file_cls = type("GuardedFileIO", (_GuardedFileIO,), {"guard": guard})
    text_cls = type("GuardedText", (_GuardedText,), {"guard": guard})
    for name in ("out", "err"):
        fdcap = getattr(capturing, name, None)
        old = getattr(fdcap, "tmpfile", None)
        if fdcap is None or not isinstance(old, io.TextIOWrapper) or old.closed:
            continue  # --capture=sys/tee-sys, or an unexpected pytest internals change
        new = text_cls(
            file_cls(os.dup(old.fileno()), "r+"),
            encoding="utf-8",
            errors="replace",
            newline="",
            write_through=True,
        )
        guard.keep.append(old)
        fdcap.tmpfile = new
        syscap = getattr(fdcap, "syscapture", None)
        if syscap is not None and getattr(syscap, "tmpfile", None) is old:
            syscap.tmpfile = new
        stream = {"out": "stdout", "err": "stderr"}[name]
        if getattr(sys, stream) is old:  # capturing right now: point the fd at the new file
            os.dup2(new.fileno(), fdcap.targetfd)
            setattr(sys, stream, new)
    _GUARDS.append(guard)
    config.pluginmanager.register(_Reporter(guard), _PLUGIN_NAME)


def take_refusals() -> list[str]:
    """The closes refused since the last report (and forget them): for the guard's own test."""
    taken = [stack for g in _GUARDS for stack in g.attempts]
    for g in _GUARDS:
        g.attempts.clear()
    return taken


class _Reporter:
    def __init__(self, guard: _Guard) -> None:
        self.guard = guard

    # trylast: inside pytest's warning capture, so the warning reaches the summary (and, under
    # xdist, the controller's summary)
    @pytest.hookimpl(hookwrapper=True, trylast=True)
    def pytest_runtest_protocol(self, item: pytest.Item, nextitem: pytest.Item | None):  # type: ignore[no-untyped-def]
        yield
        if self.guard.attempts:
            stacks, self.guard.attempts = self.guard.attempts, []
            warnings.warn_explicit(
                CaptureClosedWarning(
                    f"{item.nodeid} (or a thread it left running) closed pytest's capture "
                    f"file; refused:\n" + "\n".join(stacks)
                ),
                category=CaptureClosedWarning,
                filename=str(item.path),
                lineno=0,
            )

    @pytest.hookimpl(tryfirst=True)
    def pytest_unconfigure(self, config: pytest.Config) -> None:
        self.guard.allow_close = True  # pytest stops capturing (and closes the files) after this
