"""`fedsilo demo` options that do not fit together: a usage error (exit 2) naming the options,
on one line, whichever demo module found it (`fedsilo demo` turns it into typer's usage error).
"""

from __future__ import annotations

from collections.abc import Sequence

from pydantic import ValidationError

from flows.exceptions import DemoError


class DemoOptionError(DemoError):
    """Demo options that cannot run together; `options` names them, `message` says why."""

    def __init__(self, options: Sequence[str], message: str) -> None:
        super().__init__(tuple(options), message)  # both in args: survives pickling
        self.options, self.message = tuple(dict.fromkeys(options)), message

    def __str__(self) -> str:
        return f"{'/'.join(self.options)}: {self.message}"


def spec_refusal(exc: ValidationError, options: Sequence[str]) -> DemoOptionError:
    """The run spec's refusal as one line naming `options`: pydantic's messages only, without
    its error count, input echo and documentation link."""
    said = (" ".join(e["msg"].removeprefix("Value error, ").split()) for e in exc.errors())
    return DemoOptionError(options, "; ".join(dict.fromkeys(said)))
