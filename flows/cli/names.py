"""Names and run ids typed on the command line, checked against the service's own name rule
(``schemas.wire.NAME_PATTERN``) before anything is sent: the service would refuse such a value
anyway, and the person learns which option was wrong (exit 2) instead of a service error."""

from __future__ import annotations

import re

from flows.cli.common import fail
from schemas.wire import NAME_PATTERN

NAME_RULE = "1 to 64 letters, digits, '_', '.' or '-', starting with a letter or digit"


def is_name(value: str) -> bool:
    return re.fullmatch(NAME_PATTERN, value) is not None


def checked_name(value: str, option: str) -> str:
    """`value` when it is a federation or silo name; else exit 2 naming `option` and `value`."""
    if not is_name(value):
        raise fail(f"{option} {value!r} is not a valid name ({NAME_RULE})")
    return value


def checked_run_id(value: str, option: str = "RUN_ID") -> str:
    """`value` when it can be a run id or a prefix of one; else exit 2 naming it."""
    if not is_name(value):
        raise fail(
            f"{option} {value!r} is not a run id or a prefix of one ({NAME_RULE}); "
            "`fedsilo runs list` shows the runs"
        )
    return value
