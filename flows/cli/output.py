"""What read commands print: markup-safe text, tables with whole ids, `--json`, and run ids
resolved from a unique prefix."""

from __future__ import annotations

import json
from collections.abc import Iterable
from datetime import datetime
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from flows.cli.names import checked_run_id
from flows.exceptions import UnknownName
from silos.client_errors import InvalidPayload, NotFound

if TYPE_CHECKING:
    from flows.service_client import CoordinatorClient

JsonOpt = Annotated[
    bool, typer.Option("--json", help="Print JSON (stable keys) instead of a table.")
]

RUN_ID_WIDTH = 32  # uuid4 hex, as the service makes them

# Command output is data (run reasons, silo names, ledger text): never read as Rich markup.
out = Console(markup=False, highlight=False)


def say(text: str) -> None:
    """Print a line of command output literally (brackets included)."""
    out.print(text, soft_wrap=True)


def emit_json(data: Any) -> None:
    """Print `data` as indented JSON (datetimes as ISO 8601) on stdout."""
    typer.echo(json.dumps(data, indent=2, default=_jsonable))


def _jsonable(value: object) -> object:
    if isinstance(value, datetime):
        return value.isoformat()
    if hasattr(value, "model_dump"):
        return value.model_dump(mode="json")
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def table(*columns: str, title: str | None = None, whole: tuple[str, ...] = ("run",)) -> Table:
    """A table whose cells wrap instead of being cut to "…"; `whole` columns (ids people copy
    into the next command) never wrap either."""
    t = Table(title=title)
    for column in columns:
        if column in whole:
            t.add_column(column, no_wrap=True, min_width=RUN_ID_WIDTH)
        else:
            t.add_column(column, overflow="fold")
    return t


def when(value: datetime | None) -> str:
    return "-" if value is None else value.strftime("%Y-%m-%d %H:%M:%S")


def resolve_prefix(prefix: str, known: Iterable[str], what: str) -> str:
    """The one name in `known` that is `prefix` or starts with it.

    Raises
    ------
    UnknownName
        No match (listing the known names, at most 10) or several (listing them).
    """
    names = list(dict.fromkeys(known))
    if prefix in names:
        return prefix
    matches = [n for n in names if n.startswith(prefix)]
    if len(matches) == 1:
        return matches[0]
    if matches:
        raise UnknownName(
            f"{what} id prefix {prefix!r} matches {len(matches)} {what}s: "
            f"{', '.join(matches)}; give more characters"
        )
    shown = ", ".join(names[:10]) + (f" and {len(names) - 10} more" if len(names) > 10 else "")
    raise UnknownName(f"no {what} {prefix!r}; known: {shown or 'none'}")


def resolve_run_id(client: CoordinatorClient, prefix: str) -> str:
    """A whole run id from a whole one or a unique prefix of one the service knows; exit 2
    when `prefix` cannot be one (`checked_run_id`), before anything is sent."""
    checked_run_id(prefix)
    try:
        return client.get_run(prefix).run_id
    except (NotFound, InvalidPayload):  # a prefix, or not an id at all
        pass
    runs = client.list_runs(limit=1000)
    try:
        return resolve_prefix(prefix, [r.run_id for r in runs], "run")
    except UnknownName as exc:
        raise UnknownName(f"{exc}; `fedsilo runs list` shows the runs") from exc
