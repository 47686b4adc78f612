"""Errors of the orchestration layer.

FlowError
├── RunFailed       a round could not complete (too few silos by the deadline, ...)
├── DemoError       the embedded demo could not start one of its processes
└── AdminTokenError the coordinator's admin token could not be read safely (file or block)
"""


class FlowError(Exception):
    """Base class for orchestration errors."""


class RunFailed(FlowError):
    """A training run failed; the message names the round and the silos at fault."""


class DemoError(FlowError):
    """The embedded demo could not bring up a process; the message names it and its log."""


class AdminTokenError(FlowError):
    """The admin token's file or Secret block is missing, empty or readable by others; the
    message names the file or block and how to fix it."""
