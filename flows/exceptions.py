"""Errors of the orchestration layer.

FlowError
├── RunFailed       a round could not complete (too few silos by the deadline, ...)
│   └── RoundFailed a round ended failed at the service (an asynchronous run goes on)
├── RunCancelled    someone cancelled the run at the service (`fedsilo runs cancel`)
├── DemoError       the embedded demo could not start one of its processes
├── AdminTokenError the coordinator's admin token could not be read safely (file or block)
└── UnknownName     a silo, run or federation the command was given does not exist (or a run id
                    prefix matches several runs); the message lists the known ones
"""


class FlowError(Exception):
    """Base class for orchestration errors."""


class RunFailed(FlowError):
    """A training run failed; the message names the round and the silos at fault."""


class RoundFailed(RunFailed):
    """The service closed a round as failed; `record` is its summary. A synchronous run fails
    with it; an asynchronous run records it and opens its next buffer."""

    def __init__(self, message: str, record: object) -> None:
        super().__init__(message, record)  # both in args: the exception survives pickling
        self.message, self.record = message, record

    def __str__(self) -> str:
        return self.message


class RunCancelled(FlowError):
    """The run was cancelled at the service; the message names the run and the reason."""


class DemoError(FlowError):
    """The embedded demo could not bring up a process; the message names it and its log."""


class AdminTokenError(FlowError):
    """The admin token's file or Secret block is missing, empty or readable by others; the
    message names the file or block and how to fix it."""


class UnknownName(FlowError):
    """No silo, run or federation of that name (or an ambiguous run id prefix); the message
    names it and lists the candidates."""
