"""Options and helpers shared by the `fedsilo` command modules."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

console = Console()

ServiceUrls = Annotated[
    list[str],
    typer.Option(
        "--service-url",
        envvar="FEDSILO_SERVICE_URL",
        help="Aggregation service address; repeat for failover.",
    ),
]
TokenOpt = Annotated[
    str | None,
    typer.Option("--token", envvar="FEDSILO_ADMIN_TOKEN", help="Coordinator's admin token."),
]
TokenFileOpt = Annotated[
    Path | None,
    typer.Option(
        "--token-file",
        help="File holding the admin token (the service "
        "writes WORKSPACE/admin.token on first start).",
    ),
]


def token_from(token: str | None, token_file: Path | None) -> str:
    """The coordinator's admin token from --token, --token-file or FEDSILO_ADMIN_TOKEN."""
    if token:
        return token
    if token_file:
        return token_file.read_text().strip()
    raise typer.BadParameter("give --token, --token-file or set FEDSILO_ADMIN_TOKEN")
