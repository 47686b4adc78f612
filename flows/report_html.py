"""The report's Jinja2 environment: templates under ``flows/templates/``, autoescape on.

Everything that comes from the ledger is data written by silos and services, not trusted
markup, so every template variable is escaped; the few cells that are markup (plots, links)
are built in the templates from escaped values. Filters format metrics and digests.
"""

from __future__ import annotations

from functools import cache
from typing import Any

from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape


def fmt(value: Any) -> str:
    """A metric or count for a table cell; ``-`` when absent."""
    if isinstance(value, float):
        # Small values (a delta of 1e-5) keep their significant digits.
        return f"{value:.4f}" if value == 0 or abs(value) >= 0.01 else f"{value:.3g}"
    return "-" if value is None else str(value)


def short(value: Any, length: int = 16) -> str:
    """The start of a sha256 for reading (the template puts the full value in a tooltip)."""
    return str(value or "")[:length]


@cache
def environment() -> Environment:
    """The report templates' environment (built once; templates are package data)."""
    env = Environment(
        loader=PackageLoader("flows", "templates"),
        # .j2 templates render HTML: escape everything unless a template says otherwise
        autoescape=select_autoescape(enabled_extensions=("html", "j2"), default=True),
        undefined=StrictUndefined,  # a misspelt field fails the render, not the reader
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=False,
    )
    env.filters["fmt"] = fmt
    env.filters["short"] = short
    return env


def render(template: str, **context: Any) -> str:
    """Render one template of ``flows/templates/`` with `context`."""
    return environment().get_template(template).render(**context)
